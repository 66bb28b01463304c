/*
 * notify: tells the service manager (systemd, through $NOTIFY_SOCKET) where respguard is in its
 * life: ready to serve, reloading, stopping. Built on libsystemd's sd_notify when meson found it
 * (-Dsystemd=auto|enabled); otherwise every call does nothing. Outside systemd ($NOTIFY_SOCKET
 * unset) every call does nothing either. Never fails the caller: a manager that does not listen
 * is not respguard's error.
 */
#ifndef RESPGUARD_NOTIFY_H
#define RESPGUARD_NOTIFY_H

/* READY=1: the listeners are bound and accept (after start-up, and after a reload). */
void notify_ready(void);
/* RELOADING=1: a reload begins; notify_ready() follows when it is over (success or not). */
void notify_reloading(void);
/* STOPPING=1: shutdown began (listeners close, sessions drain). */
void notify_stopping(void);

#endif

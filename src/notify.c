/*
 * notify: sd_notify(3) messages to the service manager, or nothing when built without libsystemd
 * (see notify.h). The only file that includes <systemd/sd-daemon.h>.
 */
#include "respguard/notify.h"

#ifdef RG_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>

/* sd_notify returns 0 when $NOTIFY_SOCKET is unset and < 0 on a send error: neither stops us. */
static void send_state(const char *state)
{
    (void)sd_notify(0, state);
}
#else
static void send_state(const char *state)
{
    (void)state;
}
#endif

void notify_ready(void)
{
    send_state("READY=1\nSTATUS=serving");
}

void notify_reloading(void)
{
    send_state("RELOADING=1\nSTATUS=reloading the configuration");
}

void notify_stopping(void)
{
    send_state("STOPPING=1\nSTATUS=draining sessions");
}

# Sourced by scripts/quickstart.sh, scripts/redis-suite.sh and bench/lib.sh: a throwaway CA and a
# server certificate for localhost / 127.0.0.1 signed by it (EC P-256), for local stand-in
# Redis servers. Not for production certificates.
#
#   make_local_certs DIR CA_NAME DAYS NAME   writes DIR/ca.{key,crt} and DIR/NAME.{key,crt}
make_local_certs() {
    local dir=$1 ca_name=$2 days=$3 name=$4
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" -subj "/CN=$ca_name" \
        -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
        -keyout "$dir/$name.key" -out "$dir/$name.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$dir/san.ext"
    openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
        -days "$days" -extfile "$dir/san.ext" -out "$dir/$name.crt" 2>/dev/null
}

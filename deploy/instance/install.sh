#!/bin/sh
# Install the LLM stack on the instance (a vast.ai VM): the files, keys, TLS and the systemd unit.
#
#   sh install.sh [--dir DIR] [--no-systemd] [--agent-env FILE] [--instance-env FILE]
#
# Reads DIR/.env (default DIR ~/llm-stack) and checks every value it uses before it writes
# anything: a refused install changes nothing. Then it
# - copies compose.yaml, health-nginx.conf, llm-stack.service and the dead-man switch
#   (vastpanel_agent.py, vastpanel-agent.service) into DIR and keeps DIR/.env at mode 0600;
# - generates VLLM_API_KEY in .env when it is missing or empty (the OpenAI routes are never
#   served without a key) and writes nginx's key maps (DIR/nginx-keys/) from it and the
#   optional METRICS_TOKEN;
# - makes a self-signed TLS certificate for nginx's port 8001 once (DIR/nginx-tls/, key 0600)
#   and prints its SHA-256 fingerprint as the panel takes it, VAST_INSTANCE_TLS_FINGERPRINT=<64
#   hex digits>; INSTANCE_PLAIN_HTTP=true in .env serves plain HTTP instead;
# - with VAST_AGENT_SECRET in .env, turns on the dead-man switch: the secret, CONTAINER_ID and
#   CONTAINER_API_KEY (from this script's environment, else the file vast.ai writes on VM
#   instances, /etc/environment, else .env) go to the agent's own file, FILE of --agent-env
#   (default /etc/vastpanel-agent.env, root, 0600), and the unit starts compose's `agent`
#   profile; CONTAINER_API_KEY can destroy the instance, so it is kept nowhere else;
# - renders DIR/llm-stack.service and, unless --no-systemd, installs, enables and restarts it
#   (root, or sudo).
# Run it again after changing anything in .env. It never prints a key or a secret.
set -eu

dir="${HOME}/llm-stack"
systemd=1
agent_env=/etc/vastpanel-agent.env
instance_env=/etc/environment
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) dir="$2"; shift 2 ;;
        --no-systemd) systemd=0; shift ;;
        --agent-env) agent_env="$2"; shift 2 ;;
        --instance-env) instance_env="$2"; shift 2 ;;
        *)
            echo "usage: sh install.sh [--dir DIR] [--no-systemd] [--agent-env FILE]" \
                "[--instance-env FILE]" >&2
            exit 2 ;;
    esac
done

here="$(cd "$(dirname "$0")" && pwd)"
umask 077
if [ "$(id -u)" = 0 ]; then as_root=""; else as_root="sudo"; fi

die() {
    echo "install.sh: $*" >&2
    exit 1
}

# The last non-empty value of NAME in a KEY=VALUE file, quotes removed (as compose and pam_env
# read theirs); nothing when the file is missing.
file_value() {
    [ -f "$2" ] || return 0
    sed -n "s/^[[:space:]]*\(export[[:space:]][[:space:]]*\)\{0,1\}$1=//p" "$2" \
        | sed -e 's/[[:space:]]*$//' -e 's/^"\(.*\)"$/\1/' -e "s/^'\(.*\)'$/\1/" \
        | sed '/^$/d' | tail -n 1
}

read_env() {
    file_value "$1" "$dir/.env"
}

# Keys go into nginx's config as "Bearer KEY" and into KEY=VALUE files: keep them to
# characters that need no quoting.
check_key() {
    if ! printf '%s' "$2" | grep -Eq '^[A-Za-z0-9._~+/=-]{16,}$'; then
        die "$1 in $dir/.env must be 16 or more of A-Z a-z 0-9 . _ ~ + / = -"
    fi
}

# An instance variable vast.ai sets: this script's environment, else vast.ai's file, else .env.
instance_value() {
    value="$(eval "printf '%s' \"\${$1:-}\"")"
    [ -n "$value" ] || value="$(file_value "$1" "$instance_env")"
    [ -n "$value" ] || value="$(read_env "$1")"
    printf '%s' "$value"
}

# --- check everything before writing anything ---------------------------------------------

key="$(read_env VLLM_API_KEY)"
[ -z "$key" ] || check_key VLLM_API_KEY "$key"
token="$(read_env METRICS_TOKEN)"
[ -z "$token" ] || check_key METRICS_TOKEN "$token"

plain="$(read_env INSTANCE_PLAIN_HTTP | tr 'A-Z' 'a-z')"
case "$plain" in
    true | yes | on | 1) plain=1 ;;
    "" | false | no | off | 0) plain=0 ;;
    *) die "INSTANCE_PLAIN_HTTP in $dir/.env must be true or false, got '$plain'" ;;
esac
if [ "$plain" = 0 ] && ! command -v openssl > /dev/null; then
    die "openssl is needed for the TLS certificate (apt-get install openssl)"
fi

secret="$(read_env VAST_AGENT_SECRET)"
if [ -n "$secret" ]; then
    check_key VAST_AGENT_SECRET "$secret"
    container_id="$(instance_value CONTAINER_ID)"
    container_key="$(instance_value CONTAINER_API_KEY)"
    if [ -z "$container_id" ] || [ -z "$container_key" ]; then
        die "VAST_AGENT_SECRET is set, but CONTAINER_ID and CONTAINER_API_KEY are not in the" \
            "environment nor in $instance_env (vast.ai writes them there on VM instances)"
    fi
    case "$container_id" in
        *[!0-9]*) die "CONTAINER_ID must be the instance's numeric id, got '$container_id'" ;;
    esac
    if ! printf '%s' "$container_key" | grep -Eq '^[A-Za-z0-9._~+/=:-]+$'; then
        die "CONTAINER_API_KEY holds characters it cannot be written with"
    fi
fi

# --- the files and .env -------------------------------------------------------------------

mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
if [ "$here" != "$dir" ]; then
    cp "$here/compose.yaml" "$here/health-nginx.conf" "$here/llm-stack.service" \
        "$here/vastpanel_agent.py" "$here/vastpanel-agent.service" "$dir/"
fi
touch "$dir/.env"
chmod 600 "$dir/.env"

if [ -z "$key" ]; then
    key="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    sed -i '/^VLLM_API_KEY=$/d' "$dir/.env"
    printf 'VLLM_API_KEY=%s\n' "$key" >> "$dir/.env"
    echo "install.sh: generated VLLM_API_KEY in $dir/.env (clients send it as Bearer)"
fi

# --- nginx's key maps ---------------------------------------------------------------------

# A map entry matching exactly "Bearer KEY": a case-sensitive regex (nginx matches plain map
# strings ignoring case), with the two regex characters a checked key may hold escaped.
map_entry() {
    printf 'default 0;\n"~^Bearer %s$" 1;\n' "$(printf '%s' "$1" | sed 's/[.+]/\\&/g')"
}

mkdir -p "$dir/nginx-keys"
map_entry "$key" > "$dir/nginx-keys/api-key.map"
if [ -n "$token" ]; then
    map_entry "$token" > "$dir/nginx-keys/metrics-token.map"
else
    printf 'default 1;  # no METRICS_TOKEN: /metrics is open\n' > "$dir/nginx-keys/metrics-token.map"
fi
# nginx's master process (root in its container) reads them through a read-only mount.
chmod 600 "$dir/nginx-keys/api-key.map" "$dir/nginx-keys/metrics-token.map"

# --- TLS on port 8001 ---------------------------------------------------------------------

tls="$dir/nginx-tls"
mkdir -p "$tls"
if [ "$plain" = 1 ]; then
    printf '%s\n' "# Written by install.sh: INSTANCE_PLAIN_HTTP=true in .env, so no TLS." \
        "listen 8001;" > "$tls/listen.conf"
    echo "install.sh: WARNING: port 8001 serves plain HTTP (INSTANCE_PLAIN_HTTP=true): keys," \
        "prompts and answers cross the network unencrypted"
else
    if [ ! -s "$tls/cert.pem" ] || [ ! -s "$tls/key.pem" ]; then
        # Made once and kept: the panel pins this certificate, a new one needs the new pin.
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
            -subj "/CN=vastpanel-instance" -keyout "$tls/key.pem" -out "$tls/cert.pem" \
            2> "$tls/openssl.log" || die "openssl failed: $(cat "$tls/openssl.log")"
        rm -f "$tls/openssl.log"
        echo "install.sh: made a new TLS certificate for port 8001 ($tls/cert.pem)"
    fi
    chmod 600 "$tls/key.pem"
    printf '%s\n' "# Written by install.sh: TLS with the certificate it made (nginx-tls/)." \
        "listen 8001 ssl;" \
        "ssl_certificate /etc/nginx/tls/cert.pem;" \
        "ssl_certificate_key /etc/nginx/tls/key.pem;" \
        "ssl_protocols TLSv1.2 TLSv1.3;" > "$tls/listen.conf"
    fingerprint="$(openssl x509 -in "$tls/cert.pem" -noout -fingerprint -sha256 \
        | sed 's/^.*=//' | tr -d ':' | tr 'A-F' 'a-f')"
    echo "install.sh: port 8001 serves TLS; set this in vastpanel's .env to pin the certificate:"
    echo "VAST_INSTANCE_TLS_FINGERPRINT=$fingerprint"
fi

# --- the dead-man switch ------------------------------------------------------------------

# Write stdin to FILE, mode 0600, owned by root where this script can be root.
write_private() {
    if [ -n "$as_root" ] && [ "$systemd" = 0 ]; then
        # A test run without root: the mode is kept, the owner is whoever runs it.
        cat > "$1.new" && chmod 600 "$1.new" && mv -f "$1.new" "$1"
    else
        $as_root sh -c 'umask 077 && cat > "$1.new" && chown 0:0 "$1.new" &&
            chmod 600 "$1.new" && mv -f "$1.new" "$1"' sh "$1"
    fi
}

profile=""
if [ -n "$secret" ]; then
    printf '%s\n' "# Written by install.sh from $dir/.env and vast.ai's environment: the" \
        "# dead-man switch's secrets, for the agent alone (CONTAINER_API_KEY can destroy" \
        "# this instance)." \
        "VAST_AGENT_SECRET=$secret" \
        "CONTAINER_ID=$container_id" \
        "CONTAINER_API_KEY=$container_key" | write_private "$agent_env"
    if [ -n "$(read_env CONTAINER_API_KEY)" ]; then
        sed -i '/^[[:space:]]*CONTAINER_API_KEY=/d' "$dir/.env"
        echo "install.sh: removed CONTAINER_API_KEY from $dir/.env (the agent reads $agent_env)"
    fi
    profile="--profile agent "
    echo "install.sh: dead-man switch on for instance $container_id ($agent_env, root, 0600)"
else
    echo "install.sh: dead-man switch off (no VAST_AGENT_SECRET in $dir/.env)"
    if [ -n "$(read_env CONTAINER_API_KEY)" ]; then
        echo "install.sh: WARNING: CONTAINER_API_KEY in $dir/.env can destroy this instance;" \
            "delete it there (install.sh copies it to $agent_env when the switch is on)"
    fi
fi

# --- the systemd unit ---------------------------------------------------------------------

sed -e "s|^WorkingDirectory=.*|WorkingDirectory=$dir|" \
    -e "s|^ExecStart=.*|ExecStart=/usr/bin/docker compose ${profile}up -d|" \
    "$here/llm-stack.service" > "$dir/llm-stack.service.new"
mv -f "$dir/llm-stack.service.new" "$dir/llm-stack.service"

if [ "$systemd" = 1 ]; then
    $as_root cp "$dir/llm-stack.service" /etc/systemd/system/llm-stack.service
    $as_root chmod 644 /etc/systemd/system/llm-stack.service
    $as_root systemctl daemon-reload
    $as_root systemctl enable llm-stack.service
    $as_root systemctl restart llm-stack.service  # picks up new keys and settings
fi
echo "install.sh: done in $dir"

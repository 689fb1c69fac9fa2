#!/bin/sh
# Install the LLM stack on the instance: the files, the keys and the systemd unit.
#
#   sh install.sh [--dir DIR] [--no-systemd]
#
# Copies compose.yaml, health-nginx.conf, llm-stack.service and the dead-man switch
# (vastpanel_agent.py, vastpanel-agent.service) into DIR (default
# ~/llm-stack), creates DIR/.env (mode 0600) if missing, and generates VLLM_API_KEY there
# when it is missing or empty: the OpenAI routes are never served without a key. It then
# writes nginx's key maps (DIR/nginx-keys/) from VLLM_API_KEY and the optional
# METRICS_TOKEN, and installs and starts llm-stack.service (needs sudo) unless --no-systemd.
# Run it again after changing either key in .env. It never prints a key.
set -eu

dir="${HOME}/llm-stack"
systemd=1
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) dir="$2"; shift 2 ;;
        --no-systemd) systemd=0; shift ;;
        *) echo "usage: sh install.sh [--dir DIR] [--no-systemd]" >&2; exit 2 ;;
    esac
done

here="$(cd "$(dirname "$0")" && pwd)"
umask 077
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
if [ "$here" != "$dir" ]; then
    cp "$here/compose.yaml" "$here/health-nginx.conf" "$here/llm-stack.service" \
        "$here/vastpanel_agent.py" "$here/vastpanel-agent.service" "$dir/"
fi
touch "$dir/.env"
chmod 600 "$dir/.env"

# The last non-empty value of NAME in .env (compose reads the file the same way).
read_env() {
    sed -n "s/^$1=//p" "$dir/.env" | sed '/^$/d' | tail -n 1
}

# Keys go into nginx's config as "Bearer KEY": keep them to characters that need no quoting.
check_key() {
    if ! printf '%s' "$2" | grep -Eq '^[A-Za-z0-9._~+/=-]{16,}$'; then
        echo "install.sh: $1 in $dir/.env must be 16 or more of A-Z a-z 0-9 . _ ~ + / = -" >&2
        exit 1
    fi
}

key="$(read_env VLLM_API_KEY)"
if [ -z "$key" ]; then
    key="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    sed -i '/^VLLM_API_KEY=$/d' "$dir/.env"
    printf 'VLLM_API_KEY=%s\n' "$key" >> "$dir/.env"
    echo "install.sh: generated VLLM_API_KEY in $dir/.env (clients send it as Bearer)"
fi
check_key VLLM_API_KEY "$key"
token="$(read_env METRICS_TOKEN)"

# A map entry matching exactly "Bearer KEY": a case-sensitive regex (nginx matches plain map
# strings ignoring case), with the two regex characters a checked key may hold escaped.
map_entry() {
    printf 'default 0;\n"~^Bearer %s$" 1;\n' "$(printf '%s' "$1" | sed 's/[.+]/\\&/g')"
}

mkdir -p "$dir/nginx-keys"
map_entry "$key" > "$dir/nginx-keys/api-key.map"
if [ -n "$token" ]; then
    check_key METRICS_TOKEN "$token"
    map_entry "$token" > "$dir/nginx-keys/metrics-token.map"
else
    printf 'default 1;  # no METRICS_TOKEN: /metrics is open\n' > "$dir/nginx-keys/metrics-token.map"
fi
# nginx's master process (root in its container) reads them through a read-only mount.
chmod 600 "$dir/nginx-keys/api-key.map" "$dir/nginx-keys/metrics-token.map"

if [ "$systemd" = 1 ]; then
    sed "s|^WorkingDirectory=.*|WorkingDirectory=$dir|" "$dir/llm-stack.service" \
        | sudo tee /etc/systemd/system/llm-stack.service > /dev/null
    sudo systemctl daemon-reload
    sudo systemctl enable llm-stack.service
    sudo systemctl restart llm-stack.service  # picks up new keys
fi
echo "install.sh: done in $dir"

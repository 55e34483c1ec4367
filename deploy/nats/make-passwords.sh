#!/bin/sh
# Writes the secrets of docker-compose.nats.yml to $ENV_FILE (default: .env beside it), each a
# random password, and keeps those already there: HYFLEET_NATS_PASSWORD (the backend's NATS and
# MQTT login, `hyfleet`), DEVICE_NATS_PASSWORD (the firmware's MQTT login, `device`: provision
# it to the fleet) and POSTGRES_PASSWORD (kept once set: the database volume keeps the password
# it was created with). The file is readable by its owner only.
#
# Usage: deploy/nats/make-passwords.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
env_file=${ENV_FILE:-$here/../../.env}

# Letters and digits only: nothing that needs escaping in a nats:// or mqtt:// URL.
secret() { tr -dc 'A-Za-z0-9' </dev/urandom | head -c 24; }

umask 077
touch "$env_file"
for name in HYFLEET_NATS_PASSWORD DEVICE_NATS_PASSWORD POSTGRES_PASSWORD; do
    if grep -q "^$name=" "$env_file"; then
        echo "$name: kept"
    else
        echo "$name=$(secret)" >>"$env_file"
        echo "$name: written to $env_file"
    fi
done

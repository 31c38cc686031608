#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests, run as the `postgres` user.
#
#   eval "$(scripts/pg-server.sh start DIR)"   # prints the exports below
#   scripts/pg-server.sh restart DIR          # a database restart, for tests
#   scripts/pg-server.sh stop DIR
#
# DIR (made by the caller, e.g. mktemp -d) receives the cluster, its socket,
# a CA and a server certificate (TLS on), and a password file. The server
# listens on the unix socket and on TCP (all addresses, so that network
# namespaces can reach it over a veth); TCP logins need the password (SCRAM)
# and come only from 127.0.0.1 and the test subnet 10.213.0.0/16.
# Exports: VFOLDERFS_TEST_PG (an admin URL whose role may create databases),
# VFOLDERFS_TEST_PG_PORT, VFOLDERFS_TEST_PG_CA, PGPASSFILE.
set -euo pipefail
cmd=${1:?usage: pg-server.sh start|restart|stop DIR}
dir=${2:?usage: pg-server.sh start|restart|stop DIR}
dir=$(cd "$dir" && pwd)

bindir=""
for v in 17 16 15; do
  if [ -x "/usr/lib/postgresql/$v/bin/pg_ctl" ]; then bindir=/usr/lib/postgresql/$v/bin; break; fi
done
if [ -z "$bindir" ] && [ "$cmd" = start ]; then
  echo "pg-server.sh: installing PostgreSQL (Debian's postgresql package)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi
as_pg() { runuser -u postgres -- "$@"; }

case "$cmd" in
start)
  chmod 755 "$dir"
  install -d -o postgres -g postgres -m 700 "$dir/data" "$dir/sock"
  chmod 755 "$dir/sock"
  as_pg "$bindir/initdb" -D "$dir/data" -A trust -U postgres --no-sync >/dev/null
  # A free TCP port: let the kernel pick one, then give it to PostgreSQL.
  port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("",0)); print(s.getsockname()[1])')
  # TLS: a CA and a server certificate for localhost / 127.0.0.1.
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=vfolderfs test CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$dir/san.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 2 -extfile "$dir/san.ext" -out "$dir/server.crt" 2>/dev/null
  install -o postgres -g postgres -m 600 "$dir/server.key" "$dir/server.crt" "$dir/data/"
  cat >"$dir/data/pg_hba.conf" <<HBA
local all all trust
host all all 127.0.0.1/32 scram-sha-256
host all all 10.213.0.0/16 scram-sha-256
HBA
  as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/data/log" -w -t 60 start \
    -o "-k $dir/sock -p $port -c listen_addresses=* -c ssl=on -c max_connections=400 \
        -c fsync=off -c synchronous_commit=off -c full_page_writes=off" >/dev/null
  pw=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  as_pg "$bindir/psql" -h "$dir/sock" -p "$port" -U postgres -d postgres -q -v ON_ERROR_STOP=1 \
    -c "CREATE ROLE vfolderfs LOGIN CREATEDB PASSWORD '$pw'" >/dev/null
  printf '*:%s:*:vfolderfs:%s\n' "$port" "$pw" >"$dir/pgpass"
  chmod 600 "$dir/pgpass"
  echo "$port" >"$dir/port"
  echo "export VFOLDERFS_TEST_PG='postgres://vfolderfs@127.0.0.1:$port/postgres?sslmode=disable'"
  echo "export VFOLDERFS_TEST_PG_PORT=$port"
  echo "export VFOLDERFS_TEST_PG_CA='$dir/ca.crt'"
  echo "export PGPASSFILE='$dir/pgpass'"
  ;;
restart)
  as_pg "$bindir/pg_ctl" -D "$dir/data" -m fast -w -t 60 restart >/dev/null
  ;;
stop)
  if [ -n "$bindir" ] && [ -f "$dir/data/postmaster.pid" ]; then
    as_pg "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null || true
  fi
  ;;
*)
  echo "usage: pg-server.sh start|restart|stop DIR" >&2
  exit 2
  ;;
esac

# A throwaway PostgreSQL cluster for the tests: sourced by scripts/test and
# scripts/with-postgres, never run by itself.
#
#   start_test_postgres   initdb + pg_ctl start as the `postgres` user in a fresh temp dir,
#                         listening on 127.0.0.1 only, on a free port, trust auth for
#                         loopback, no durability (fsync off: the data is thrown away);
#                         exports TEST_POSTGRES_URL (the server's `postgres` database;
#                         tests create a database of their own in it)
#   stop_test_postgres    stops the cluster and deletes its directory; safe to call twice
#
# TEST_PG_OPTIONS adds server settings after the ones below (a later `-c` wins), e.g.
# TEST_PG_OPTIONS="-c shared_buffers=1GB" for the million-user benchmark.
#
# Debian installs the server binaries in /usr/lib/postgresql/<version>/bin, outside PATH; the
# newest version there is used, else `initdb` from PATH. Root runs the server as `postgres`
# (PostgreSQL refuses to run as root); any other user runs it as themself.

TEST_PG_DIR=""
TEST_PG_BIN=""
TEST_PG_USER=""

# Runs a command as the cluster's owner.
test_pg_as_owner() {
    if [[ $TEST_PG_USER == "$(id -un)" ]]; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        runuser -u "$TEST_PG_USER" -- "$@"
    else
        su "$TEST_PG_USER" -s /bin/sh -c "$(printf '%q ' "$@")"
    fi
}

test_pg_find_bin() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [[ -n $dir && -x $dir/initdb ]]; then
        echo "$dir"
    elif command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
    else
        echo "error: no PostgreSQL server binaries (initdb) found; install the postgresql package" >&2
        return 1
    fi
}

# A TCP port nobody listens on right now (bound by the kernel, then released).
test_pg_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start_test_postgres() {
    TEST_PG_BIN=$(test_pg_find_bin)
    if [[ $(id -u) -eq 0 ]]; then
        TEST_PG_USER=postgres
        if ! id "$TEST_PG_USER" >/dev/null 2>&1; then
            echo "error: running as root, but there is no \`postgres\` user to run the server as" >&2
            return 1
        fi
    else
        TEST_PG_USER=$(id -un)
    fi
    TEST_PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/bulwark-test-pg.XXXXXX")
    chown "$TEST_PG_USER" "$TEST_PG_DIR"
    chmod 0700 "$TEST_PG_DIR"
    test_pg_as_owner "$TEST_PG_BIN/initdb" --pgdata="$TEST_PG_DIR/data" --username=postgres \
        --auth-local=trust --auth-host=trust --encoding=UTF8 --locale=C.UTF-8 --no-sync \
        >"$TEST_PG_DIR/initdb.log" 2>&1 || {
        cat "$TEST_PG_DIR/initdb.log" >&2
        return 1
    }
    local port attempt
    for attempt in 1 2 3; do
        port=$(test_pg_free_port)
        # Loopback only; the socket directory is private to this cluster.
        if test_pg_as_owner "$TEST_PG_BIN/pg_ctl" --pgdata="$TEST_PG_DIR/data" \
            --log="$TEST_PG_DIR/server.log" --wait --timeout=60 \
            -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$TEST_PG_DIR \
                -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
                -c max_connections=300 -c shared_buffers=64MB ${TEST_PG_OPTIONS:-}" \
            start >/dev/null; then
            export TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
            echo "test PostgreSQL $("$TEST_PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$port ($TEST_PG_DIR)"
            return 0
        fi
        echo "PostgreSQL did not start on port $port (attempt $attempt):" >&2
        tail -n 5 "$TEST_PG_DIR/server.log" >&2 || true
    done
    return 1
}

stop_test_postgres() {
    if [[ -n $TEST_PG_DIR && -d $TEST_PG_DIR ]]; then
        if [[ -f $TEST_PG_DIR/data/postmaster.pid ]]; then
            test_pg_as_owner "$TEST_PG_BIN/pg_ctl" --pgdata="$TEST_PG_DIR/data" \
                --mode=immediate --wait stop >/dev/null 2>&1 || true
        fi
        rm -rf "$TEST_PG_DIR"
    fi
    TEST_PG_DIR=""
    unset TEST_POSTGRES_URL
}

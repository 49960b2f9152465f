# Sourced by the shell tests of the binaries: a scratch directory removed on
# exit, fail, and start_server.
dir=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill -9 $pid 2>/dev/null; rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; tail -20 "$dir/log" 2>/dev/null; exit 1; }

# start_server SERVER MODEL [flags...]: fwp-server on a free loopback port;
# sets $pid and $addr (127.0.0.1:PORT), logs to $dir/log.
start_server() {
  local server="$1" model="$2"
  shift 2
  rm -f "$dir/port"
  "$server" --model "$model" --address 127.0.0.1:0 --metrics_port -1 --port_file "$dir/port" \
    "$@" 2> "$dir/log" &
  pid=$!
  for _ in $(seq 1 300); do [ -s "$dir/port" ] && break; sleep 0.1; done
  [ -s "$dir/port" ] || fail "server did not start"
  addr="127.0.0.1:$(cat "$dir/port")"
}

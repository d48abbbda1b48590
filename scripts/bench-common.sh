# Sourced by the benchmarks: builds the release binary ($FICUS), starts a
# throwaway cluster (scripts/pg-throwaway.sh) with a database `bench`, makes a
# scratch directory ($bench) with a ficus.toml streaming to stdout, and removes
# it all on exit. Defines `now` and `report`.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
(cd "$root" && cargo build --release --quiet --bin ficus)
FICUS="$root/target/release/ficus"
source "$root/scripts/pg-throwaway.sh"
bench=$(mktemp -d /tmp/ficus-bench-XXXXXX)
trap 'rm -rf "$bench"; as_pg "$PG_BIN/pg_ctl" -D "$PG_WORK/data" -m immediate stop >/dev/null 2>&1; rm -rf "$PG_WORK"' EXIT
sql -d postgres -c 'create database bench'
mkdir -p "$bench/mappings"
cat > "$bench/ficus.toml" <<TOML
[source]
url = "postgres://postgres@127.0.0.1:$PGPORT/bench?sslmode=disable"
slot = "ficus_bench"
[[sink]]
type = "stdout"
TOML

now() { date +%s.%N; }

# report REFERENCE_NAME FICUS_NAME ROWS EVENTS T0 T1 T2 T3: the reference ran from T0 to T1
# and from T2 to T3 (before and after ficus, so that neither gets the warmer caches alone),
# ficus from T1 to T2.
report() {
  python3 - "$@" <<'PY'
import sys
ref_name, ficus_name, rows, events = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
t0, t1, t2, t3 = map(float, sys.argv[5:9])
before, ficus, after = rows / (t1 - t0), rows / (t2 - t1), rows / (t3 - t2)
ref = (before + after) / 2
print(f"rows={rows} events={events} {ref_name}={ref:,.0f} rows/s (before {before:,.0f}, after {after:,.0f}) "
      f"{ficus_name}={ficus:,.0f} rows/s ratio={ficus / ref:.2f}")
PY
}

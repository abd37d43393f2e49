// Wall-clock time through WASI (Extism has no clock of its own; hosts give
// plugins WASI's clocks: the Extism SDKs with wasi enabled, wasmgate always).

@external("wasi_snapshot_preview1", "clock_time_get")
declare function clock_time_get(id: u32, precision: u64, out: usize): u16;

const CLOCK_REALTIME: u32 = 0;
const OUT = memory.data(8);

/** Milliseconds since the Unix epoch. */
export function nowMs(): i64 {
  if (clock_time_get(CLOCK_REALTIME, 1000000, OUT) != 0) return 0;
  return <i64>(load<u64>(OUT) / 1000000);
}

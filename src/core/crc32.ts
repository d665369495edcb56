/**
 * CRC-32 (IEEE 802.3, the zip checksum), incremental: crc32(b, crc32(a)) === crc32(a ++ b).
 * Slice-by-8: eight table lookups per 8 input bytes instead of one per byte, so checking every
 * byte of a checkpoint at load costs a small fraction of reading it.
 */
export function crc32(data: Uint8Array, previous = 0): number {
  return native !== null ? native(data, previous) : crc32Portable(data, previous);
}

/** An incremental CRC-32 with crc32's contract: a platform's own (e.g. Node's zlib, several GB/s). */
export type Crc32Function = (data: Uint8Array, previous: number) => number;
let native: Crc32Function | null = null;

/**
 * Lets a host (the Node layer) supply a faster CRC-32. It is checked against the portable one on
 * check strings (empty, short, unaligned, incremental) and refused if it disagrees anywhere, so a
 * wrong implementation can never make a corrupt file pass.
 */
export function useNativeCrc32(impl: Crc32Function): boolean {
  const probe = new Uint8Array(1031).map((_, i) => (i * 131 + 7) & 0xff);
  const cases: Array<[Uint8Array, number]> = [[probe.subarray(0, 0), 0], [probe.subarray(0, 9), 0], [probe.subarray(3), 0], [probe.subarray(5, 800), 0x12345678], [probe, 0xffffffff]];
  for (const [d, prev] of cases) if (impl(d, prev) >>> 0 !== crc32Portable(d, prev)) return false;
  native = impl;
  return true;
}

/** The specification: slice-by-8 in plain TypeScript, for hosts without a native CRC-32. */
export function crc32Portable(data: Uint8Array, previous = 0): number {
  let c = (previous ^ CRC_MASK) >>> 0;
  const n = data.length;
  let i = 0;
  const t = CRC_TABLES;
  // Buffers read from files start 4-byte aligned: two 32-bit loads per 8 bytes instead of eight.
  if (data.byteOffset % 4 === 0 && LITTLE_ENDIAN) {
    const words = new Uint32Array(data.buffer, data.byteOffset, n >>> 2);
    const pairs = words.length >>> 1;
    for (let w = 0; w < pairs; w++) {
      const a = c ^ words[2 * w];
      const b = words[2 * w + 1];
      c = t[7 * 256 + (a & 0xff)] ^ t[6 * 256 + ((a >>> 8) & 0xff)] ^ t[5 * 256 + ((a >>> 16) & 0xff)] ^ t[4 * 256 + (a >>> 24)] ^
        t[3 * 256 + (b & 0xff)] ^ t[2 * 256 + ((b >>> 8) & 0xff)] ^ t[256 + ((b >>> 16) & 0xff)] ^ t[b >>> 24];
    }
    i = pairs * 8;
  }
  for (const end = n - (n % 8); i < end; i += 8) {
    const a = c ^ (data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24));
    c = t[7 * 256 + (a & 0xff)] ^ t[6 * 256 + ((a >>> 8) & 0xff)] ^ t[5 * 256 + ((a >>> 16) & 0xff)] ^ t[4 * 256 + (a >>> 24)] ^
      t[3 * 256 + data[i + 4]] ^ t[2 * 256 + data[i + 5]] ^ t[256 + data[i + 6]] ^ t[data[i + 7]];
  }
  for (; i < n; i++) c = t[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return (c ^ CRC_MASK) >>> 0;
}

const CRC_MASK = 0xffffffff;
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
const CRC_POLY = 0xedb88320;

/** Table k maps a byte to its CRC after being followed by k zero bytes (table 0 is the classic one). */
const CRC_TABLES = (() => {
  const t = new Int32Array(8 * 256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? CRC_POLY ^ (c >>> 1) : c >>> 1;
    t[n] = c;
  }
  for (let k = 1; k < 8; k++) {
    for (let n = 0; n < 256; n++) {
      const prev = t[(k - 1) * 256 + n];
      t[k * 256 + n] = t[prev & 0xff] ^ (prev >>> 8);
    }
  }
  return t;
})();

/** CRC-32 (IEEE 802.3, the zip checksum), incremental: crc32(b, crc32(a)) === crc32(a ++ b). */
export function crc32(data: Uint8Array, previous = 0): number {
  let c = (previous ^ CRC_MASK) >>> 0;
  for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return (c ^ CRC_MASK) >>> 0;
}

const CRC_MASK = 0xffffffff;

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

// CRC-32 check of an exported model file (a zip archive) before libtorch loads it.
//
// libtorch's zip reader does not verify CRCs, so a file with one damaged byte in its weights loads
// and gives wrong energies without a word. The Python side refuses such files in read_metadata
// (export/exporter.py); this is the same check for a user's own LAMMPS deck. torch writes its
// records uncompressed (method 0), so the CRC is that of the stored bytes.
#ifndef SO3KRATES_ARCHIVE_CHECK_H
#define SO3KRATES_ARCHIVE_CHECK_H

#include <array>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace so3krates {

inline uint32_t crc32(const unsigned char *data, size_t size)
{
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[n] = c;
    }
    return t;
  }();
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < size; ++i) c = table[(c ^ data[i]) & 0xFFu] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

// Little-endian reads that stop at the end of the buffer (a truncated file is "damaged").
struct ZipBytes {
  std::vector<unsigned char> bytes;
  bool ok = true;
  uint64_t get(size_t at, int width)
  {
    if (at + width > bytes.size()) {
      ok = false;
      return 0;
    }
    uint64_t v = 0;
    for (int k = width - 1; k >= 0; --k) v = (v << 8) | bytes[at + k];
    return v;
  }
};

// "" when every stored member's CRC-32 matches its central-directory record (or the file is no zip
// archive at all, which torch::jit::load reports itself); otherwise what is wrong (the damaged
// member's name, or why the archive cannot be read).
inline std::string damaged_member(const std::string &path)
{
  std::ifstream in(path, std::ios::binary);
  ZipBytes z{std::vector<unsigned char>(std::istreambuf_iterator<char>(in), {})};
  const size_t n = z.bytes.size();
  // End of central directory: the last "PK\5\6" within 64 kB of comment from the end.
  size_t eocd = std::string::npos;
  for (size_t back = 22; back <= n && back <= 22 + 65535; ++back)
    if (z.get(n - back, 4) == 0x06054b50u) {
      eocd = n - back;
      break;
    }
  if (eocd == std::string::npos) return "";    // not a zip archive at all: torch::jit::load says so
  uint64_t entries = z.get(eocd + 10, 2), cd_offset = z.get(eocd + 16, 4);
  if ((entries == 0xFFFF || cd_offset == 0xFFFFFFFFu) && eocd >= 20 && z.get(eocd - 20, 4) == 0x07064b50u) {
    const uint64_t zip64 = z.get(eocd - 20 + 8, 8);    // the zip64 end-of-central-directory record
    if (z.get(zip64, 4) != 0x06064b50u) return "a damaged zip64 end-of-central-directory record";
    entries = z.get(zip64 + 32, 8);
    cd_offset = z.get(zip64 + 48, 8);
  }
  size_t at = cd_offset;
  for (uint64_t e = 0; e < entries; ++e) {
    if (z.get(at, 4) != 0x02014b50u) return "a damaged central directory";
    const uint64_t method = z.get(at + 10, 2), crc = z.get(at + 16, 4);
    uint64_t size = z.get(at + 20, 4), usize = z.get(at + 24, 4), local = z.get(at + 42, 4);
    const size_t name_len = z.get(at + 28, 2), extra_len = z.get(at + 30, 2), comment_len = z.get(at + 32, 2);
    if (!z.ok) return "a truncated central directory";
    const std::string name(z.bytes.begin() + at + 46, z.bytes.begin() + at + 46 + name_len);
    // zip64 extra field (id 1): the 8-byte values of whichever fields are 0xFFFFFFFF, in this order.
    for (size_t x = at + 46 + name_len; x + 4 <= at + 46 + name_len + extra_len;) {
      const uint64_t id = z.get(x, 2), len = z.get(x + 2, 2);
      size_t v = x + 4;
      if (id == 1) {
        if (usize == 0xFFFFFFFFu) {
          usize = z.get(v, 8);
          v += 8;
        }
        if (size == 0xFFFFFFFFu) {
          size = z.get(v, 8);
          v += 8;
        }
        if (local == 0xFFFFFFFFu) local = z.get(v, 8);
      }
      x += 4 + len;
    }
    if (z.get(local, 4) != 0x04034b50u) return "a damaged local header of " + name;
    const size_t data = local + 30 + z.get(local + 26, 2) + z.get(local + 28, 2);
    if (!z.ok || data + size > n) return name + " (truncated)";
    if (method == 0 && crc32(z.bytes.data() + data, size) != crc) return name;
    at += 46 + name_len + extra_len + comment_len;
  }
  return "";
}

}    // namespace so3krates

#endif

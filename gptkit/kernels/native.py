"""C kernels built on first use: compiled once per machine into gptkit's cache folder, loaded with ctypes.

`gemv` and `decode_attention` each carry a small C source with no PyTorch headers,
so it builds in about a second with the system's C compiler (`-O3 -march=native`:
AVX-512 where the CPU has it, else AVX2 with FMA, else plain C). Where there is no compiler, or the build fails,
`build` returns None and the caller keeps to PyTorch's kernels.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path


# What every kernel source starts with: headers, and float32 / bfloat16 elements read and written as torch does.
PRELUDE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif

#define INLINE static inline __attribute__((always_inline))

INLINE float bf16_to_float(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
INLINE uint16_t float_to_bf16(float f) {  /* round to nearest even, as torch does; NaN stays NaN */
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
#if defined(__AVX512F__)
/* exp(x) for x in [-87.3, 88.3] (the caller clamps): x = n ln2 + r, |r| <= ln2 / 2, a degree-7 polynomial in r
   (Cephes' coefficients) scaled by 2^n. */
INLINE __m512 exp16_in_range(__m512 x) {
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
/* The lanes of a 16-wide vector at element d that lie before dim; 16 float32 or bfloat16 numbers from p + i as
   float32, the lanes outside `lanes` 0. */
INLINE __mmask16 lanes_from(int64_t d, int64_t dim) {
    return dim - d >= 16 ? (__mmask16)0xffff : dim > d ? (__mmask16)((1u << (dim - d)) - 1) : (__mmask16)0;
}
INLINE __m512 load16(const void *p, int bf16, int64_t i, __mmask16 lanes) {
    if (bf16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lanes, (const uint16_t *)p + i)), 16));
    return _mm512_maskz_loadu_ps(lanes, (const float *)p + i);
}
#endif
#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
/* CPUs with AVX2 and FMA but not AVX-512 (AMD's Zen 1-3, Intel's before Skylake-X and its client cores):
   8-wide float32 vectors. AVX2 has no masked loads of 16-bit elements, so a vector's last, partial part
   goes through a zeroed buffer. */
#define AVX2_ONLY 1
/* Element i .. i + 7 of a float32 (bf16 = 0) or bfloat16 vector, as float32. */
INLINE __m256 load8(const void *p, int bf16, int64_t i) {
    if (bf16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i))), 16));
    return _mm256_loadu_ps((const float *)p + i);
}
/* The same for the `count` < 8 elements from i on, the lanes past them 0. */
INLINE __m256 load8_part(const void *p, int bf16, int64_t i, int64_t count) {
    float part[8] = {0};
    for (int64_t c = 0; c < count; c++) part[c] = bf16 ? bf16_to_float(((const uint16_t *)p)[i + c]) : ((const float *)p)[i + c];
    return _mm256_loadu_ps(part);
}
/* All ones in the lanes before count (< 8), 0 past it: keeps a partial vector's padding out of a sum. */
INLINE __m256 lanes8(int64_t count) {
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}
/* The lanes of v summed in one fixed order: the upper half onto the lower, then pairs, then the last two. */
INLINE float reduce8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
/* exp(x) for x in [-87.3, 88.3] (the caller clamps), as exp16_in_range computes it: x = n ln2 + r, the same
   degree-7 polynomial in r, times 2^n made from n's bits (n + 127 is in 1 .. 254 there: a normal float). */
INLINE __m256 exp8_in_range(__m256 x) {
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}
#endif
/* body(arg, t, threads) for t in [0, threads), each t on a thread of its own where it can be. On the process's
   first thread, through OpenMP: PyTorch's own ops use that thread's OpenMP workers too, and a second set of
   workers spinning beside them would take their cores. On any other thread (the server's decoding thread),
   through gptkit's thread pool once `set_run_parallel` has been handed it (`gptkit.kernels.thread_pool`):
   libgomp lets such a thread's workers sleep at once, and every call there would wait for one to wake.
   A body takes its share from (t, threads) alone: it may be run with fewer threads than asked for. */
typedef void (*parallel_body)(void *arg, int thread, int threads);
typedef int (*parallel_runner)(parallel_body body, void *arg, int threads);
static parallel_runner run_parallel_on = 0;
void set_run_parallel(void *runner) { run_parallel_on = (parallel_runner)runner; }
static void parallel(parallel_body body, void *arg, int threads) {
    if (threads < 2) { body(arg, 0, 1); return; }
    if (run_parallel_on && syscall(SYS_gettid) != getpid()) { run_parallel_on(body, arg, threads); return; }
#if defined(_OPENMP)
    #pragma omp parallel num_threads(threads)
    body(arg, omp_get_thread_num(), omp_get_num_threads());
#else
    body(arg, 0, 1);
#endif
}
/* Element i of a float32 (bf16 = 0) or bfloat16 vector, as a float. */
INLINE float vector_at(const void *v, int bf16, int64_t i) {
    return bf16 ? bf16_to_float(((const uint16_t *)v)[i]) : ((const float *)v)[i];
}
"""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gptkit" / "kernels"


def _cpuinfo(field: str) -> str:
    """The first value of `field` in /proc/cpuinfo, or "" where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.split(":", 1)[0].strip() == field:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_vendor() -> str:
    """The CPU's vendor string ("GenuineIntel", "AuthenticAMD", ...), or "" where it cannot be read."""
    return _cpuinfo("vendor_id")


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux names them ("avx512f", "amx_bf16", ...); empty where unknown."""
    return frozenset(_cpuinfo("flags").split())


def _compile(compiler: str, flags: list[str], source: str, library: Path) -> bool:
    try:
        library.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
            source_file = Path(tmp) / f"{library.stem}.c"
            source_file.write_text(source)
            built = Path(tmp) / library.name
            subprocess.run([compiler, *flags, str(source_file), "-o", str(built)], check=True, capture_output=True, timeout=120)
            os.replace(built, library)  # atomic: another process may be building the same file
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def build(name: str, source: str, *, openmp: bool = True) -> ctypes.CDLL | None:
    """`PRELUDE` and `source` compiled as `<cache>/<name>-<key>.so` (keyed by source, compiler, flags and CPU) and loaded, or None.

    With OpenMP where the compiler has it: the library then needs `libgomp.so.1`, the
    runtime PyTorch's own wheel loads under that name, so the dynamic loader hands it
    the one already in the process and the kernel's threads are PyTorch's threads.
    """
    source = PRELUDE + source
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None or platform.system() != "Linux":
        return None
    base = ["-O3", "-march=native", "-shared", "-fPIC", "-pthread"]
    for flags in ([*base, "-fopenmp"], base) if openmp else ([*base],):
        key = hashlib.sha256("\n".join([source, compiler, *flags, platform.machine(), *sorted(cpu_flags())]).encode()).hexdigest()
        library = cache_dir() / f"{name}-{key[:16]}.so"
        if library.exists() or _compile(compiler, flags, source, library):
            break
    else:
        return None
    try:
        return ctypes.CDLL(str(library))
    except OSError:
        return None


class Library:
    """A kernel's library, built (or found not buildable) on the first `get`, then kept for the process."""

    def __init__(self, build: Callable[[], ctypes.CDLL | None]) -> None:
        self._build = build
        self._library: ctypes.CDLL | None | bool = False  # False: not tried yet

    def get(self) -> ctypes.CDLL | None:
        if self._library is False:
            self._library = self._build()
        return self._library  # type: ignore[return-value]

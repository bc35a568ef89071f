"""The GPU path's reduction kernels: CUDA source, NVRTC and its cache, the emulated twin, a GPU.

- the kernels' C++ built on the HOST by g++ (``__device__`` & co. defined away, a grid run one
  thread at a time): every float16/bfloat16/fp8 pattern widened and float32 (float16: double)
  narrowed, bitwise against numpy/ml_dtypes; reduce/scale/divide against host.py for every
  dtype and op, through the vector, head and element paths and in place (skips without g++);
- NVRTC: every dtype compiles for sm_90, 16-byte loads/stores in the PTX, errors carry the log
  (skips without cuda-python's nvrtc or libnvrtc); the disk cache with NVRTC counted by a
  stand-in (runs everywhere);
- ``device_kernels``: EmulatedKernels against host.py on a stub device, CudaKernels' launches on
  a recording one; a real GPU (skips without one): every dtype x op at sizes 0, 1, 7, 100003,
  4Mi+5 and one misaligned range against host.py, through ``pyxccl.cuda.get_device`` where it
  exists, else :class:`_DriverDevice` (a stand-in). Bit for bit, except that any NaN equals any
  NaN that arithmetic made (x86 passes an operand's payload on, a GPU makes its canonical NaN).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import ml_dtypes
import numpy as np
import pytest

from pyxccl import config
from pyxccl.dtypes import AVG, DTYPES, MAX, MIN, PROD, SUM, premul_sum
from pyxccl.errors import PyxcclError
from pyxccl.runtime.kernels import cuda, cuda_source, device_kernels, host
from pyxccl.runtime.kernels.emulated import EmulatedKernels

NAMES = list(DTYPES)
NARROW = ["float16", "bfloat16", "float8_e4m3", "float8_e5m2"]
BINARY = {"pyx_add": SUM, "pyx_mul": PROD, "pyx_min": MIN, "pyx_max": MAX}
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


# ---------------------------------------------------------------- data and comparison

def _values(name: str, n: int, seed: int) -> np.ndarray:
    """Random elements: integers over their whole range (sums and products wrap), narrow floats
    as random bit patterns (NaN, inf, subnormals included), wide floats of every magnitude with
    the special values sprinkled in."""
    dt, rng = DTYPES[name], np.random.default_rng(seed)
    if not dt.is_float:
        info = np.iinfo(dt.np)
        return rng.integers(info.min, info.max, n, dtype=dt.np, endpoint=True)
    if dt.itemsize <= 2:
        return rng.integers(0, 1 << (8 * dt.itemsize), n, dtype=_UINT[dt.itemsize]).view(dt.np)
    x = (rng.standard_normal(n) * 10.0 ** rng.uniform(-6, 6, n)).astype(dt.np)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, ml_dtypes.finfo(dt.np).smallest_subnormal,
                        ml_dtypes.finfo(dt.np).max, 1.0], dt.np)
    pick = rng.random(n) < 0.05
    x[pick] = rng.choice(special, int(pick.sum()))
    return x


def _pair(name: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b): independent, but b repeats a (or a with the sign flipped) in places, for ties."""
    a, b = _values(name, n, seed), _values(name, n, seed + 1)
    rng = np.random.default_rng(seed + 2)
    same = rng.random(n) < 0.1
    b[same] = a[same]
    if DTYPES[name].is_float:
        flip = rng.random(n) < 0.05
        b[flip] = -a[flip]
    return a, b


def _specials(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of ±0, ±1, ±inf and two NaNs (another payload, or sign for fp8): ties and NaNs."""
    dt = DTYPES[name]
    u = _UINT[dt.itemsize]
    nan = np.array([np.nan], dt.np).view(u)[0]
    other = nan | u(1) if dt.itemsize > 1 else nan ^ u(0x80)
    vals = np.concatenate([np.array([0.0, -0.0, 1.0, -1.0] + [np.inf, -np.inf] * (name != "float8_e4m3"), dt.np),
                           np.array([nan, other], u).view(dt.np)])
    a, b = np.meshgrid(vals.view(u), vals.view(u))
    return a.ravel().view(dt.np), b.ravel().view(dt.np)


def _assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Equal bits, or both NaN."""
    assert got.dtype == want.dtype and got.shape == want.shape, what
    gb, wb = got.view(_UINT[got.itemsize]), want.view(_UINT[got.itemsize])
    bad = gb != wb
    if got.dtype.kind != "i" and got.dtype.kind != "u" and bad.any():
        both_nan = np.isnan(got.astype(np.float64)) & np.isnan(want.astype(np.float64))
        bad &= ~both_nan
    if bad.any():
        i = np.flatnonzero(bad)[:5]
        pytest.fail(f"{what}: {int(bad.sum())} elements differ, e.g. at {i.tolist()}: "
                    f"got {[hex(int(v)) for v in gb[i]]}, want {[hex(int(v)) for v in wb[i]]}")


def _aligned(n: int, dtype: np.dtype, offset: int = 0) -> np.ndarray:
    """n elements starting ``offset`` elements past a 64-byte boundary."""
    dtype = np.dtype(dtype)
    raw = np.zeros((n + offset) * dtype.itemsize + 64, np.uint8)
    start = (-raw.ctypes.data) % 64 + offset * dtype.itemsize
    return raw[start:start + n * dtype.itemsize].view(dtype)


def _reference(name: str, op, a: np.ndarray, b: np.ndarray, nranks: int = 3) -> np.ndarray:
    """What a collective's kernels make of two ranks' inputs, computed by host.py."""
    with np.errstate(all="ignore"):
        if op.name == "premul_sum":
            a, b = host.prescale(a, op), host.prescale(b, op)
        out = host.ufunc(op)(a, b)
        if op.name == "avg":
            host.postdivide(out, nranks)
    return out


# ---------------------------------------------------------------- the C++ built on the host

_HOST_PRELUDE = """
#define __device__
#define __host__
#define __global__
struct pyx_dim3 { unsigned int x; };
static pyx_dim3 threadIdx = {0}, blockIdx = {0}, blockDim = {1}, gridDim = {1};
extern "C" void t_grid(unsigned grid, unsigned block, unsigned b, unsigned t) {
    gridDim.x = grid; blockDim.x = block; blockIdx.x = b; threadIdx.x = t;
}
#define PYX_EACH(name, In, Out, f) \\
    extern "C" void name(const In* in, Out* out, pyx_u64 n) { for (pyx_u64 i = 0; i < n; ++i) out[i] = f(in[i]); }
"""
_HOST_CONVERSIONS = "PYX_EACH(t_widen, pyx_s, float, pyx_load)\nPYX_EACH(t_narrow, float, pyx_s, pyx_store)\n"
_HOST_F64_TO_F16 = "PYX_EACH(t_f64_to_f16, double, pyx_u16, pyx_f64_to_f16)\n"


@pytest.fixture(scope="session")
def host_libs(tmp_path_factory):
    """Every dtype's module built as a host shared library (g++ -O2, IEEE: no contraction)."""
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not installed: the kernels' C++ can't be checked on the host")
    d = tmp_path_factory.mktemp("host_kernels")
    procs = {}
    for name in NAMES:
        text = _HOST_PRELUDE + cuda_source.source(name)
        if name in NARROW:
            text += _HOST_CONVERSIONS + (_HOST_F64_TO_F16 if name == "float16" else "")
        (d / f"{name}.cpp").write_text(text)
        procs[name] = subprocess.Popen(
            [gxx, "-std=c++17", "-O2", "-shared", "-fPIC", "-ffp-contract=off", "-Wall", "-Werror",
             "-Wno-unknown-pragmas", "-o", str(d / f"{name}.so"), str(d / f"{name}.cpp")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    libs = {}
    for name, p in procs.items():
        out = p.communicate()[0].decode()
        assert p.returncode == 0, f"g++ failed on {name}:\n{out}"
        lib = ctypes.CDLL(str(d / f"{name}.so"))
        for k in BINARY:
            getattr(lib, k).argtypes = (ctypes.c_void_p,) * 3 + (ctypes.c_ulonglong,)
        lib.pyx_scale.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_double, ctypes.c_ulonglong)
        lib.pyx_divide.argtypes = (ctypes.c_void_p, ctypes.c_ulonglong, ctypes.c_uint)
        libs[name] = lib
    return libs


def _host_launch(lib, kernel: str, args: tuple, grid: int = 1, block: int = 1) -> None:
    """Run ``kernel`` as a grid of ``grid`` x ``block`` threads, one thread after another."""
    for b in range(grid):
        for t in range(block):
            lib.t_grid(grid, block, b, t)
            getattr(lib, kernel)(*args)


def _convert(fn, src: np.ndarray, out_dtype) -> np.ndarray:
    src = np.ascontiguousarray(src)
    out = np.empty(src.size, out_dtype)
    fn(ctypes.c_void_p(src.ctypes.data), ctypes.c_void_p(out.ctypes.data), ctypes.c_ulonglong(src.size))
    return out


@pytest.mark.parametrize("name", NARROW)
def test_widening_every_bit_pattern_matches_numpy(host_libs, name):
    dt = DTYPES[name]
    codes = np.arange(1 << (8 * dt.itemsize), dtype=np.uint64).astype(_UINT[dt.itemsize]).view(dt.np)
    got = _convert(host_libs[name].t_widen, codes, np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), codes.astype(np.float32).view(np.uint32))


@np.errstate(all="ignore")
def _narrowing_inputs(name: str) -> np.ndarray:
    """float32s that test a rounding to ``name``: a sweep of the whole float32 bit space, every
    exact tie between neighbouring codes and the floats on either side of it, random NaNs."""
    dt = DTYPES[name]
    sweep = np.arange(0, 1 << 32, 2039, dtype=np.uint64).astype(np.uint32).view(np.float32)
    codes = np.arange(1 << (8 * dt.itemsize), dtype=np.uint64).astype(_UINT[dt.itemsize]).view(dt.np)
    wide = codes.astype(np.float64)
    wide = np.unique(wide[np.isfinite(wide)])
    ties = ((wide[:-1] + wide[1:]) / 2).astype(np.float32)  # exact: a tie needs a bit or two past the code
    top = ml_dtypes.finfo(dt.np).max.astype(np.float32)
    edges = np.array([0.0, np.finfo(np.float32).smallest_subnormal, np.finfo(np.float32).tiny, top,
                      top * 1.0001, top * 1.5, 3.0e38, np.inf, np.nan], np.float32)
    rng = np.random.default_rng(7)
    nans = (rng.integers(0, 1 << 23, 1000, dtype=np.uint32) | 0x7f800001).astype(np.uint32)
    nans[::2] |= np.uint32(0x80000000)
    x = np.concatenate([sweep, ties, np.nextafter(ties, np.float32(np.inf)),
                        np.nextafter(ties, np.float32(0)), edges, nans.view(np.float32)])
    return np.concatenate([x, -x])


@pytest.mark.parametrize("name", NARROW)
def test_narrowing_from_float32_rounds_as_numpy_and_ml_dtypes(host_libs, name):
    dt, x = DTYPES[name], _narrowing_inputs(name)
    with np.errstate(all="ignore"):
        want = x.astype(dt.np).view(_UINT[dt.itemsize])
    np.testing.assert_array_equal(_convert(host_libs[name].t_narrow, x, want.dtype), want)


def test_double_to_float16_rounds_once_as_numpy(host_libs):
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float64)
    halves = np.unique(halves[np.isfinite(halves)])
    ties = (halves[:-1] + halves[1:]) / 2
    rng = np.random.default_rng(3)
    x = np.concatenate([ties, np.nextafter(ties, np.inf), np.nextafter(ties, -np.inf),
                        rng.standard_normal(20000) * 10.0 ** rng.uniform(-9, 6, 20000),
                        [65504.0, 65519.99, 65520.0, 1e300, np.inf, np.nan, 5e-324, 2.0 ** -25]])
    x = np.concatenate([x, -x])
    with np.errstate(all="ignore"):
        want = x.astype(np.float16)
    got = _convert(host_libs["float16"].t_f64_to_f16, x, np.uint16)
    np.testing.assert_array_equal(got, want.view(np.uint16))
    with np.errstate(all="ignore"):  # premul_sum casts by np.float16(python float): the same rounding
        assert all(np.float16(float(v)).view(np.uint16) == g for v, g in zip(x[::97], got[::97]) if v == v)


@pytest.mark.parametrize("name", NAMES)
def test_host_built_kernels_compute_what_host_py_computes(host_libs, name):
    """reduce, scale and divide through every path: 16-byte vectors (aligned), a scalar head
    (all three pointers one element past a boundary), element by element (pointers misaligned
    against each other), in place, and a grid of 2 x 3 threads striding."""
    lib, dt = host_libs[name], DTYPES[name]
    n = 203
    a0, b0 = _pair(name, n, seed=11)
    if dt.is_float:
        sa, sb = _specials(name)
        a0, b0 = np.concatenate([a0, sa]), np.concatenate([b0, sb])
        n = a0.size
    for kernel, op in BINARY.items():
        want = _reference(name, op, a0, b0)
        for oa, ob, oo, grid, block in ((0, 0, 0, 1, 1), (1, 1, 1, 1, 1), (1, 0, 0, 1, 1), (0, 0, 0, 2, 3),
                                        (3, 3, 3, 2, 3)):
            a, b, out = _aligned(n, dt.np, oa), _aligned(n, dt.np, ob), _aligned(n, dt.np, oo)
            a[...], b[...] = a0, b0
            _host_launch(lib, kernel, (out.ctypes.data, a.ctypes.data, b.ctypes.data, n), grid, block)
            _assert_same(out, want, f"{name} {kernel} offsets {(oa, ob, oo)} grid {grid}x{block}")
        a, b = _aligned(n, dt.np), _aligned(n, dt.np)
        a[...], b[...] = a0, b0
        _host_launch(lib, kernel, (b.ctypes.data, a.ctypes.data, b.ctypes.data, n))
        _assert_same(b, want, f"{name} {kernel} in place")
    factors = (0.1, -3.7, 1e-3, 2.0, 1e5, -0.0) if dt.is_float else (3.0, 2.9, 0.0) + ((-2.0,) * (dt.np.kind == "i"))
    for factor in factors:
        with np.errstate(all="ignore"):
            want = host.prescale(a0, premul_sum(factor))
        for offset in (0, 1):
            src, out = _aligned(n, dt.np, offset), _aligned(n, dt.np, offset)
            src[...] = a0
            _host_launch(lib, "pyx_scale", (out.ctypes.data, src.ctypes.data, factor, n))
            _assert_same(out, want, f"{name} scale by {factor}")
    for nranks in (2, 3, 7, 8, 100):
        want = a0.copy()
        with np.errstate(all="ignore"):
            host.postdivide(want, nranks)
        x = _aligned(n, dt.np, 1)
        x[...] = a0
        _host_launch(lib, "pyx_divide", (x.ctypes.data, n, nranks), 2, 2)
        _assert_same(x, want, f"{name} divide by {nranks}")


# ---------------------------------------------------------------- NVRTC

@pytest.fixture
def cache_in(monkeypatch):
    """``cache_in(path)``: point PYXCCL_CACHE_DIR at ``path`` for this test, with empty in-process caches."""
    monkeypatch.setattr(cuda, "_images", {})
    monkeypatch.setattr(cuda, "_modules", {})

    def point(path) -> None:
        monkeypatch.setenv("PYXCCL_CACHE_DIR", str(path))
        config.reset()

    yield point
    config.reset()


@pytest.fixture(scope="session")
def cubins(tmp_path_factory):
    """Every dtype's CUBIN for sm_90, compiled once for the session (into its own disk cache)."""
    why = cuda.nvrtc_missing()
    if why:
        pytest.skip(why)
    mp = pytest.MonkeyPatch()
    mp.setenv("PYXCCL_CACHE_DIR", str(tmp_path_factory.mktemp("kernel_cache")))
    config.reset()
    try:
        yield {name: cuda.compile(name, 90) for name in NAMES}
    finally:
        mp.undo()
        config.reset()


@pytest.mark.parametrize("name", NAMES)
def test_every_dtype_compiles_with_nvrtc_for_sm_90(cubins, name):
    assert cubins[name][:4] == b"\x7fELF" and all(k.encode() in cubins[name] for k in cuda_source.KERNELS)
    assert "#include" not in cuda_source.source(name)


@pytest.mark.parametrize("name", ["float8_e4m3", "float64"])
def test_the_kernels_move_16_bytes_a_load_and_a_store(cubins, name):
    from cuda.bindings import nvrtc

    err, prog = nvrtc.nvrtcCreateProgram(cuda_source.source(name).encode(), b"k.cu", 0, [], [])
    opts = [o.encode() for o in cuda.OPTIONS] + [b"--gpu-architecture=compute_90"]
    assert nvrtc.nvrtcCompileProgram(prog, len(opts), opts)[0] == nvrtc.nvrtcResult.NVRTC_SUCCESS
    _, size = nvrtc.nvrtcGetPTXSize(prog)
    ptx = b" " * size
    nvrtc.nvrtcGetPTX(prog, ptx)
    nvrtc.nvrtcDestroyProgram(prog)
    text = ptx.decode(errors="replace")
    vec = ".v4.u32" if DTYPES[name].itemsize < 8 else ".v2.f64"
    for kernel in cuda_source.KERNELS:
        body = text[text.index(f".entry {kernel}("):]
        body = body[:body.index("\n}")]
        assert f"ld.global{vec}" in body and f"st.global{vec}" in body, kernel


def test_a_compile_error_carries_nvrtcs_log():
    why = cuda.nvrtc_missing()
    if why:
        pytest.skip(why)
    with pytest.raises(PyxcclError, match=r"(?s)bad\.cu.*this_is_not_declared"):
        cuda.nvrtc_compile('extern "C" __global__ void k() { this_is_not_declared(); }', 90, "bad.cu")


# ---------------------------------------------------------------- the disk cache (NVRTC counted)

@pytest.fixture
def counted(monkeypatch):
    """NVRTC replaced by a stand-in that counts its compiles (the image names source and arch)."""
    calls: list[int] = []

    def fake(source: str, arch: int, name: str) -> bytes:
        calls.append(arch)
        return f"IMAGE sm_{arch} {len(source)} {hash(source)}".encode()

    monkeypatch.setattr(cuda, "nvrtc_compile", fake)
    monkeypatch.setitem(cuda._state, "version", (13, 5))
    return calls


def test_a_second_compile_does_not_call_nvrtc(cache_in, counted, tmp_path, monkeypatch):
    cache_in(tmp_path)
    first = cuda.compile("int32", 90)
    assert cuda.compile("int32", 90) is first and counted == [90]  # this process's cache
    monkeypatch.setattr(cuda, "_images", {})  # a new process: the disk's
    assert cuda.compile("int32", 90) == first and counted == [90]
    assert [f.name for f in (tmp_path / "kernels").iterdir()] == [
        cuda.cache_key(cuda_source.source("int32"), 90) + ".cubin"]


def test_another_arch_or_source_is_another_file(cache_in, counted, tmp_path, monkeypatch):
    cache_in(tmp_path)
    cuda.compile("int32", 90)
    cuda.compile("int32", 80)
    real = cuda_source.source
    monkeypatch.setattr(cuda_source, "source", lambda dt: real(dt) + "\n// changed\n")
    cuda.compile("int32", 90)
    assert counted == [90, 80, 90] and len(list((tmp_path / "kernels").glob("*.cubin"))) == 3


def test_the_default_cache_is_under_xdg_cache_home(cache_in, counted, tmp_path, monkeypatch):
    monkeypatch.delenv("PYXCCL_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    config.reset()
    assert cuda.cache_dir() == tmp_path / "xdg" / "pyxccl" / "kernels"
    cuda.compile("uint8", 90)
    assert len(list((tmp_path / "xdg" / "pyxccl" / "kernels").glob("*.cubin"))) == 1


def test_a_corrupt_cache_file_is_compiled_again(cache_in, counted, tmp_path, monkeypatch):
    cache_in(tmp_path)
    image = cuda.compile("float32", 90)
    (path,) = (tmp_path / "kernels").glob("*.cubin")
    for damage in (b"", b"garbage", path.read_bytes()[:-1], b"X" + path.read_bytes()[1:]):
        path.write_bytes(damage)
        monkeypatch.setattr(cuda, "_images", {})
        assert cuda.compile("float32", 90) == image
    assert len(counted) == 5
    monkeypatch.setattr(cuda, "_images", {})
    assert cuda.compile("float32", 90) == image and len(counted) == 5  # repaired


def test_an_unwritable_cache_dir_still_compiles_and_warns_once(cache_in, counted, tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("in the way")
    cache_in(tmp_path / "a_file" / "cache")  # mkdir fails, also for root
    warnings: list[str] = []
    monkeypatch.setattr(cuda.log, "warn", lambda msg, *args, **kw: warnings.append(msg % args))
    monkeypatch.setitem(cuda._state, "warned", False)
    assert cuda.compile("int8", 90).startswith(b"IMAGE")
    assert cuda.compile("uint8", 90).startswith(b"IMAGE")
    assert len(counted) == 2 and len(warnings) == 1 and "can't be written" in warnings[0]


# ---------------------------------------------------------------- device_kernels

class _StubDevice:
    """The emulated device's two kernel methods: ``run`` calls at once, ``view`` maps host memory."""

    def __init__(self, name: str = "cuda:0") -> None:
        self.name, self.index, self.arch, self.emulated, self.runs = name, 0, 0, True, 0

    def run(self, stream, fn) -> None:
        self.runs += 1
        fn()

    def view(self, address: int, nbytes: int) -> np.ndarray:
        if nbytes == 0:
            return np.empty(0, np.uint8)
        return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(address))


OPS = [SUM, PROD, MIN, MAX, AVG, premul_sum(0.3)]


def test_device_kernels_picks_by_emulated_and_caches_per_device():
    dev = _StubDevice()
    k = device_kernels(SUM, "float32", dev)
    assert isinstance(k, EmulatedKernels) and device_kernels("sum", DTYPES["float32"], dev) is k
    assert device_kernels(premul_sum(2.0), "float32", dev) is device_kernels(premul_sum(3.0), "float32", dev)
    assert device_kernels(SUM, "float32", _StubDevice()) is not k  # a device made anew, same name


@pytest.mark.parametrize("name", NAMES)
def test_emulated_kernels_compute_what_host_py_computes(name):
    dev, dt = _StubDevice(), DTYPES[name]
    a0, b0 = _pair(name, 1001, seed=5)
    for op in OPS:
        if op.name == "premul_sum" and not dt.is_float:
            continue
        k = device_kernels(op, dt, dev)
        a, b, out = a0.copy(), b0.copy(), np.zeros_like(a0)
        with np.errstate(all="ignore"):
            if op.name == "premul_sum":
                k.scale(a.ctypes.data, a.ctypes.data, a.size, op.scalar, None)  # in place
                k.scale(out.ctypes.data, b.ctypes.data, b.size, op.scalar, None)
                b[...] = out
            k.reduce(out.ctypes.data, a.ctypes.data, b.ctypes.data, a.size, None)
            if op.name == "avg":
                k.divide(out.ctypes.data, out.size, 3, None)
        _assert_same(out, _reference(name, op, a0, b0), f"emulated {name} {op}")
    runs = dev.runs
    k.reduce(out.ctypes.data, a.ctypes.data, b.ctypes.data, 0, None)
    k.scale(out.ctypes.data, a.ctypes.data, 0, 2.0, None)
    k.divide(out.ctypes.data, 0, 4, None)
    k.divide(out.ctypes.data, 5, 1, None)
    assert dev.runs == runs


class _RecordingDevice:
    """A non-emulated device that records what would be launched."""

    def __init__(self) -> None:
        self.name, self.index, self.arch, self.emulated = "cuda:7", 7, 90, False
        self.launches: list[tuple] = []

    def load_module(self, image):
        return ("module", image)

    def function(self, module, name):  # the entry's name stands for the function
        return name

    def launch(self, func, grid, block, args, types, stream) -> None:
        self.launches.append((func, grid, block, args, types, stream))


def test_cuda_kernels_launch_through_the_device_contract(cache_in, counted, tmp_path):
    cache_in(tmp_path)
    dev = _RecordingDevice()
    c = ctypes
    for op, entry in ((SUM, "pyx_add"), (AVG, "pyx_add"), (premul_sum(2.0), "pyx_add"), (PROD, "pyx_mul"),
                      (MIN, "pyx_min"), (MAX, "pyx_max")):
        k = device_kernels(op, "bfloat16", dev)
        assert type(k).__name__ == "CudaKernels"
        k.reduce(1 << 20, 2 << 20, 3 << 20, 1000, "s")
        assert dev.launches[-1] == (entry, 1, cuda.BLOCK, (1 << 20, 2 << 20, 3 << 20, 1000),
                                    (c.c_void_p, c.c_void_p, c.c_void_p, c.c_ulonglong), "s")
    k.scale(16, 32, 100_000, 0.5, "t")  # 12500 steps of 16 bytes: 49 blocks of 256
    assert dev.launches[-1] == ("pyx_scale", 49, cuda.BLOCK, (16, 32, 0.5, 100_000),
                                (c.c_void_p, c.c_void_p, c.c_double, c.c_ulonglong), "t")
    k.divide(64, 1 << 30, 8, None)
    assert dev.launches[-1] == ("pyx_divide", cuda.MAX_GRID, cuda.BLOCK, (64, 1 << 30, 8),
                                (c.c_void_p, c.c_ulonglong, c.c_uint), None)
    before = len(dev.launches)
    k.reduce(0, 0, 0, 0, None)
    k.scale(0, 0, 0, 1.0, None)
    k.divide(0, 0, 2, None)
    k.divide(8, 10, 1, None)
    assert len(dev.launches) == before and counted == [90]  # one module for the dtype


# ---------------------------------------------------------------- a real GPU

def _ok(result):
    err, *values = result
    if int(err) != 0:
        raise RuntimeError(f"CUDA driver error {err!r}")
    return values[0] if len(values) == 1 else tuple(values)


class _DriverDevice:
    """A stand-in for ``pyxccl.cuda.get_device`` until :mod:`pyxccl.cuda.driver` lands: the
    contract's memory, stream and kernel methods this test uses, on cuda-python's driver API."""

    emulated = False

    def __init__(self, index: int = 0) -> None:
        from cuda.bindings import driver as cu

        self.cu, self.index, self.name = cu, index, f"cuda:{index}"
        dev = _ok(cu.cuDeviceGet(index))
        attr = cu.CUdevice_attribute
        self.arch = (10 * _ok(cu.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev))
                     + _ok(cu.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)))
        _ok(cu.cuCtxSetCurrent(_ok(cu.cuDevicePrimaryCtxRetain(dev))))

    # the contract's methods, each one driver call
    def alloc(self, nbytes): return int(_ok(self.cu.cuMemAlloc(max(nbytes, 1))))  # noqa: E704
    def free_plain(self, address): _ok(self.cu.cuMemFree(address))  # noqa: E704
    def write(self, address, data): _ok(self.cu.cuMemcpyHtoD(address, data, len(data)))  # noqa: E704
    def stream(self): return _ok(self.cu.cuStreamCreate(0))  # noqa: E704
    def load_module(self, image): return _ok(self.cu.cuModuleLoadData(image))  # noqa: E704
    def function(self, module, name): return _ok(self.cu.cuModuleGetFunction(module, name.encode()))  # noqa: E704

    def read(self, address: int, nbytes: int) -> bytes:
        buf = bytearray(nbytes)
        _ok(self.cu.cuMemcpyDtoH(buf, address, nbytes))
        return bytes(buf)

    def synchronize(self, stream=None) -> None:
        _ok(self.cu.cuCtxSynchronize() if stream is None else self.cu.cuStreamSynchronize(stream))

    def launch(self, func, grid, block, args, types, stream) -> None:
        _ok(self.cu.cuLaunchKernel(func, grid, 1, 1, block, 1, 1, 0, stream, (args, types), 0))


@pytest.fixture(scope="session")
def gpu():
    try:
        from cuda.bindings import driver as cu

        if int(cu.cuInit(0)[0]) != 0 or _ok(cu.cuDeviceGetCount()) < 1:
            pytest.skip("no CUDA device")
    except Exception as exc:  # no cuda-python, no libcuda
        pytest.skip(f"no CUDA driver: {exc}")
    try:
        from pyxccl.cuda import get_device  # type: ignore[attr-defined]
    except ImportError:
        return _DriverDevice(0)
    return get_device("cuda:0")


GPU_SIZES = (0, 1, 7, 100003, (4 << 20) + 5)


@pytest.mark.parametrize("name", NAMES)
def test_gpu_kernels_compute_what_host_py_computes(gpu, cubins, name):
    dt, top = DTYPES[name], GPU_SIZES[-1] + 1
    nbytes = top * dt.itemsize
    a_dev, b_dev, out_dev = gpu.alloc(nbytes), gpu.alloc(nbytes), gpu.alloc(nbytes)
    stream = gpu.stream()
    try:
        a0, b0 = _pair(name, top, seed=21)
        for op in OPS:
            if op.name == "premul_sum" and not dt.is_float:
                continue
            k = device_kernels(op, dt, gpu)
            for n, offset in [(n, 0) for n in GPU_SIZES] + [(100003, 1)]:
                a, b = a0[offset:offset + n], b0[offset:offset + n]
                at, bt, ot = (p + offset * dt.itemsize for p in (a_dev, b_dev, out_dev))
                gpu.write(at, a.tobytes())
                gpu.write(bt, b.tobytes())
                if op.name == "premul_sum":
                    k.scale(at, at, n, op.scalar, stream)
                    k.scale(bt, bt, n, op.scalar, stream)
                k.reduce(ot, at, bt, n, stream)
                if op.name == "avg":
                    k.divide(ot, n, 3, stream)
                gpu.synchronize(stream)
                got = np.frombuffer(gpu.read(ot, n * dt.itemsize), dt.np)
                _assert_same(got, _reference(name, op, a, b), f"GPU {name} {op} n={n} offset={offset}")
    finally:
        for p in (a_dev, b_dev, out_dev):
            gpu.free_plain(p)

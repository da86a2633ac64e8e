"""The compiled kernels share torch's OpenMP runtime, or run on one thread (macaw_fast._openmp)."""

from __future__ import annotations

import torch

from macaw_fast import _openmp


def test_runtime_libraries_from_maps_lines():
    torch_gomp = "/venv/lib/python3.11/site-packages/torch/lib/libgomp.so.1"
    lines = [
        f"7f00-7f01 r-xp 00000000 08:01 1 {torch_gomp}",
        f"7f01-7f02 r--p 00001000 08:01 1 {torch_gomp}",             # a second segment, same file
        "7f06-7f07 r-xp 00000000 08:01 4 /usr/lib/libstdc++.so.6",
        "7f07-7f08 r-xp 00000000 08:01 7 /usr/lib/libompitrace.so.40",
        "7f08-7f09 rw-p 00000000 00:00 0 [heap]",
    ]
    assert _openmp.openmp_libraries(lines) == {torch_gomp}
    for other in ("/usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0", "/wheels/torch.libs/libgomp-a34b3233.so.1",
                  "/opt/conda/lib/libiomp5.so", "/usr/lib/llvm-17/lib/libomp.so.5"):
        assert _openmp.openmp_libraries(lines + [f"7f0a-7f0b r-xp 0 08:01 5 {other}"]) == {torch_gomp, other}


def test_this_process_shares_torchs_runtime():
    # pip's torch wheels bring libgomp; the extension then uses that very library
    assert _openmp._one_runtime()
    assert _openmp.kernel_threads() == torch.get_num_threads()


def test_two_runtimes_mean_one_thread(monkeypatch):
    monkeypatch.setattr(_openmp, "_one_runtime", lambda: False)
    assert _openmp.kernel_threads() == 1

"""Make openmm-torch's kernels available in this process.

The PyPI openmm-torch 1.5 wheel's plugin (libOpenMMTorchReference.so) links libnvrtc.so.12, which
the CUDA build of torch ships inside the nvidia-cuda-nvrtc wheel but not on the library path, so
OpenMM's automatic plugin loading at import fails and a Context with a TorchForce then reports
"does not support all required kernels". Preload libnvrtc and load that one plugin again.
"""
from __future__ import annotations

import ctypes
import glob
import os
import tempfile

_loaded = False


def ensure_torch_plugin() -> None:
    global _loaded
    if _loaded:
        return
    import openmm
    if not any("libOpenMMTorchReference" in f for f in openmm.Platform.getPluginLoadFailures()):
        _loaded = True  # loaded at import: nothing to do
        return
    import torch  # noqa: F401  (loads libtorch into the process first)
    import nvidia
    candidates = []
    for root in nvidia.__path__:
        candidates += glob.glob(os.path.join(root, "cuda_nvrtc", "lib", "libnvrtc.so*"))
    if not candidates:
        raise RuntimeError("openmm-torch needs libnvrtc.so.12 (package nvidia-cuda-nvrtc-cu12, installed with "
                           "torch 2.9.1); reinstall with `make install`")
    ctypes.CDLL(sorted(candidates)[0], mode=ctypes.RTLD_GLOBAL)
    plugin = os.path.join(openmm.version.openmm_library_path, "plugins", "libOpenMMTorchReference.so")
    with tempfile.TemporaryDirectory() as folder:  # load this plugin only, not every plugin again
        os.symlink(plugin, os.path.join(folder, os.path.basename(plugin)))
        openmm.Platform.loadPluginsFromDirectory(folder)
    _loaded = True

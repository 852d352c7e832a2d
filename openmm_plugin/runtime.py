"""Make openmm-torch's kernels available in this process.

The PyPI openmm-torch 1.5 wheel's plugin (libOpenMMTorchReference.so) links libnvrtc.so.12, which
the CUDA build of torch ships inside the nvidia-cuda-nvrtc wheel but not on the library path, so
OpenMM's automatic plugin loading at import fails and a Context with a TorchForce then reports
"does not support all required kernels". Preload libnvrtc and load that one plugin again.

Nothing here runs at import: `create_force` calls `ensure_torch_plugin` when a so3krates force is
first made, so that a torch without the nvidia wheels (a CPU-only install) or a missing
openmm-torch never breaks `import openmmml` for other models.
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
    import torch  # noqa: F401  (loads libtorch into the process first)
    candidates = _nvrtc_libraries()
    if candidates:  # the Python extension _openmmtorch links it too
        ctypes.CDLL(sorted(candidates)[0], mode=ctypes.RTLD_GLOBAL)
    try:
        import openmmtorch  # noqa: F401  (loads libOpenMMTorch.so, which the plugin needs)
    except ImportError as exc:
        raise RuntimeError(f"openmm-torch cannot be imported ({exc}); install it with `pip install openmmtorch` "
                           "(or `make install` in a so3krates checkout)") from None
    if not any("libOpenMMTorchReference" in f for f in openmm.Platform.getPluginLoadFailures()):
        _copy_torch_forces_without_xml()
        _loaded = True  # the plugin loaded when openmm was imported
        return
    if not candidates:
        raise RuntimeError("openmm-torch needs libnvrtc.so.12 (package nvidia-cuda-nvrtc-cu12, installed with "
                           "torch 2.9.1); reinstall with `make install`")
    plugin = os.path.join(openmm.version.openmm_library_path, "plugins", "libOpenMMTorchReference.so")
    with tempfile.TemporaryDirectory() as folder:  # load this plugin only, not every plugin again
        os.symlink(plugin, os.path.join(folder, os.path.basename(plugin)))
        openmm.Platform.loadPluginsFromDirectory(folder)
    _copy_torch_forces_without_xml()
    _loaded = True


def _nvrtc_libraries() -> list:
    """libnvrtc.so* from the nvidia-cuda-nvrtc wheel; none with a CPU-only torch (no `nvidia` package)."""
    try:
        import nvidia
    except ImportError:
        return []
    candidates = []
    for root in getattr(nvidia, "__path__", []):
        candidates += glob.glob(os.path.join(root, "cuda_nvrtc", "lib", "libnvrtc.so*"))
    return candidates


def _copy_torch_forces_without_xml() -> None:
    """copy.deepcopy of an OpenMM Force goes through XmlSerializer, and deserialising a TorchForce
    crashes (segmentation fault in TorchForceProxy::deserialize: the openmm-torch 1.5 wheel does not
    match the openmm 8.6.1 wheel's std::string ABI). openmm-ml deep-copies the ML forces when it
    builds an interpolating ML/MM system, so copy TorchForces from their module instead."""
    import openmm
    import openmmtorch

    xml_copy = openmm.Force.__deepcopy__
    if getattr(xml_copy, "_so3krates", False):
        return

    def __deepcopy__(self, memo):
        try:
            source = openmmtorch.TorchForce.cast(self)
        except Exception:
            source = None
        if source is None:
            return xml_copy(self, memo)
        copy = openmmtorch.TorchForce(source.getModule(), source.getProperties())
        copy.setOutputsForces(source.getOutputsForces())
        copy.setUsesPeriodicBoundaryConditions(source.usesPeriodicBoundaryConditions())
        copy.setName(source.getName())
        copy.setForceGroup(source.getForceGroup())
        for i in range(source.getNumGlobalParameters()):
            copy.addGlobalParameter(source.getGlobalParameterName(i), source.getGlobalParameterDefaultValue(i))
        for i in range(source.getNumEnergyParameterDerivatives()):
            copy.addEnergyParameterDerivative(source.getEnergyParameterDerivativeName(i))
        return copy

    __deepcopy__._so3krates = True
    openmm.Force.__deepcopy__ = __deepcopy__

#!/usr/bin/env python3
"""Torch-free loader for PyTorch *legacy* (pre-1.6, non-zip) checkpoints.

Purpose: an independent reference (numpy only, no torch import) used to
cross-check the Rust checkpoint reader / CNN executor on the akamaster CIFAR-10
ResNet checkpoints in /work/shared/models/cifar10/*.th.

Legacy file layout (torch.serialization._legacy_save):
  1. pickle: magic number 0x1950a86a20f9469cfc6c
  2. pickle: protocol version (1001)
  3. pickle: sys_info dict (protocol_version, little_endian, type_sizes)
  4. pickle: the saved object. Tensors are REDUCEd through
       torch._utils._rebuild_tensor(storage, offset, size, stride)      (older)
       torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
                                       requires_grad, backward_hooks)   (newer)
     and storages are persistent ids
       ('storage', storage_type, key, location, numel[, view_metadata])
     where view_metadata, when not None, is (view_key, offset, view_numel):
     the storage is a slice of root storage `key`.
  5. pickle: list of storage keys, in the order their data follows
  6. for each key: int64 little-endian element count, then count*itemsize raw
     little-endian bytes.

Usage as a library:
    from torch_legacy import load_legacy, load_state_dict
    obj = load_legacy(path)          # full object, tensors -> numpy arrays
    sd  = load_state_dict(path)      # dict name -> np.ndarray ('module.' stripped)

Usage from the shell (prints a summary and parameter counts; -v lists tensors):
    python3 scripts/torch_legacy.py [-v] /work/shared/models/cifar10/resnet20-12fca82f.th
"""

import collections
import pickle
import struct
import sys

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# torch.<Name>Storage -> numpy dtype (all little-endian on disk)
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class StorageType:
    """Marker standing in for torch.FloatStorage etc."""

    def __init__(self, name):
        if name not in _STORAGE_DTYPES:
            raise ValueError("unsupported storage type torch.%s" % name)
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]

    def __repr__(self):
        return "StorageType(%s)" % self.name


class StorageRef:
    """A (possibly view-of-) storage referenced by a persistent id."""

    def __init__(self, stype, root_key, location, numel, view_offset=0):
        self.stype = stype
        self.root_key = root_key
        self.location = location
        self.numel = numel
        self.view_offset = view_offset  # in elements, into the root storage


class LazyTensor:
    """Record produced by the _rebuild_tensor stubs; materialised after the
    raw storage data has been read."""

    def __init__(self, storage, offset, size, stride, requires_grad=False):
        self.storage = storage
        self.offset = int(offset)
        self.size = tuple(int(s) for s in size)
        self.stride = tuple(int(s) for s in stride)
        self.requires_grad = bool(requires_grad)

    def materialize(self, root_arrays):
        root = root_arrays[self.storage.root_key]
        base = root[self.storage.view_offset:self.storage.view_offset + self.storage.numel]
        if len(self.size) == 0:
            return np.array(base[self.offset])
        # bounds check: the largest element index reached must be in range
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride) if n > 0)
        if any(n == 0 for n in self.size):
            return np.zeros(self.size, dtype=base.dtype)
        if self.offset < 0 or last >= base.shape[0]:
            raise ValueError("tensor view out of storage bounds")
        itemsize = base.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            base[self.offset:],
            shape=self.size,
            strides=tuple(s * itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view)  # own, contiguous copy


def _rebuild_tensor(storage, storage_offset, size, stride):
    return LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return LazyTensor(storage, storage_offset, size, stride, requires_grad)


def _rebuild_parameter(data, requires_grad, backward_hooks, *rest):
    # nn.Parameter wrapping a tensor: the data is what we want
    return data


class _LegacyUnpickler(pickle.Unpickler):
    """Resolves only the globals a state-dict checkpoint needs."""

    def __init__(self, f):
        super().__init__(f)
        self.storages = {}  # root key -> (StorageType, root numel or None)

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name.endswith("Storage"):
            return StorageType(name)
        if module in ("builtins", "__builtin__") and name in ("set", "frozenset", "slice"):
            return getattr(__import__("builtins"), name)
        raise pickle.UnpicklingError("refusing global %s.%s" % (module, name))

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError("unknown persistent id %r" % (pid,))
        stype, key, location, numel = pid[1], pid[2], pid[3], pid[4]
        view_metadata = pid[5] if len(pid) > 5 else None
        if not isinstance(stype, StorageType):
            raise pickle.UnpicklingError("bad storage type %r" % (stype,))
        if view_metadata is not None:
            # (view_key, offset, view_size): storage `view_key` is
            # root[offset:offset+view_size]; root is `key` with `numel` elements
            _view_key, offset, view_size = view_metadata
            self._register_root(key, stype, numel)
            return StorageRef(stype, key, location, int(view_size), int(offset))
        self._register_root(key, stype, numel)
        return StorageRef(stype, key, location, int(numel))

    def _register_root(self, key, stype, numel):
        prev = self.storages.get(key)
        if prev is not None and (prev[0].dtype != stype.dtype or prev[1] != numel):
            raise pickle.UnpicklingError("inconsistent storage %s" % key)
        self.storages[key] = (stype, int(numel))


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError("unexpected global %s.%s" % (module, name))


def _walk(obj, fn):
    """Replace every LazyTensor in nested dict/list/tuple containers."""
    if isinstance(obj, LazyTensor):
        return fn(obj)
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _walk(v, fn)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _walk(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_walk(v, fn) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_walk(v, fn) for v in obj)
    return obj


def load_legacy(path):
    """Load a legacy checkpoint; returns the saved object with every tensor
    replaced by a numpy array (float32 stays float32)."""
    with open(path, "rb") as f:
        magic = _PlainUnpickler(f).load()
        if magic != MAGIC_NUMBER:
            raise ValueError("%s: bad magic number %r (zip checkpoint?)" % (path, magic))
        version = _PlainUnpickler(f).load()
        if version != PROTOCOL_VERSION:
            raise ValueError("%s: unsupported protocol version %r" % (path, version))
        sys_info = _PlainUnpickler(f).load()
        if not sys_info.get("little_endian", True):
            raise ValueError("%s: big-endian checkpoint not supported" % path)
        up = _LegacyUnpickler(f)
        obj = up.load()
        keys = _PlainUnpickler(f).load()
        roots = {}
        for key in keys:
            if key not in up.storages:
                raise ValueError("%s: storage %s listed but never referenced" % (path, key))
            stype, numel = up.storages[key]
            (count,) = struct.unpack("<q", f.read(8))
            if count != numel:
                raise ValueError("%s: storage %s has %d elements, pickle said %d"
                                 % (path, key, count, numel))
            nbytes = count * stype.dtype.itemsize
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise ValueError("%s: truncated storage %s" % (path, key))
            roots[key] = np.frombuffer(raw, dtype=stype.dtype)
        missing = set(up.storages) - set(roots)
        if missing:
            raise ValueError("%s: storages without data: %s" % (path, sorted(missing)))
        trailing = f.read()
        if trailing:
            raise ValueError("%s: %d trailing bytes" % (path, len(trailing)))
    return _walk(obj, lambda t: t.materialize(roots))


def load_state_dict(path, strip_prefix="module."):
    """Return (state_dict, extra) where state_dict maps name -> np.ndarray
    (with `strip_prefix` removed) and extra holds other top-level entries."""
    obj = load_legacy(path)
    if isinstance(obj, dict) and "state_dict" in obj:
        sd = obj["state_dict"]
        extra = {k: v for k, v in obj.items() if k != "state_dict"}
    else:
        sd, extra = obj, {}
    out = collections.OrderedDict()
    for k, v in sd.items():
        if strip_prefix and k.startswith(strip_prefix):
            k = k[len(strip_prefix):]
        out[k] = v
    return out, extra


def count_parameters(sd):
    """Counts: learnable parameters (nn.Module.parameters(): conv/linear
    weights+bias and BN weight/bias) vs buffers (running stats)."""
    learn = sum(v.size for k, v in sd.items()
                if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    bufs = sum(v.size for k, v in sd.items()
               if k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    return learn, bufs


def main(argv):
    verbose = "-v" in argv
    for path in [a for a in argv[1:] if a != "-v"]:
        sd, extra = load_state_dict(path)
        learn, bufs = count_parameters(sd)
        print("%s: %d tensors, extra=%r" % (path, len(sd), extra))
        print("  learnable parameters: %d   buffers (BN running stats): %d   total: %d"
              % (learn, bufs, learn + bufs))
        if verbose:
            for k, v in sd.items():
                print("  %-40s %-16s %s" % (k, v.shape, v.dtype))


if __name__ == "__main__":
    main(sys.argv)

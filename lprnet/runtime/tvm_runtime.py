"""The TVM runtime: a `save_artifact` folder run with the Relax VM, as a Predictor.

Does not compile (see lprnet.compile.tvm) and needs neither torch nor ONNX.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from lprnet.compile.tvm.artifact import BATCHED, MANIFEST_FILE, check_library, read_manifest
from lprnet.errors import InputError, MissingFileError
from lprnet.io import sha256_file
from lprnet.model.alphabet import get_alphabet
from lprnet.runtime.predictor import check_threads


def configure_runtime_threads(threads: int) -> int:
    """Make TVM's CPU kernels use `threads` threads; returns the count TVM reports.

    TVM creates one worker pool per calling thread on first use, sized by TVM_NUM_THREADS (default: half the logical
    CPUs on x86), and never grows it; "runtime.config_threadpool" then picks how many of its workers run. So the pool
    is sized for every CPU and `threads` chosen from it, which lets a later predictor ask for more. These are
    process-wide settings, not per predictor. TVM_BIND_THREADS=0 (unless the caller set it) stops TVM pinning the
    calling thread to one core, which would also slow every other runtime in the process.
    """
    check_threads(threads, "threads")
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    os.environ["TVM_NUM_THREADS"] = str(max(threads, os.cpu_count() or 1))
    affinity_big_cores = 1  # ThreadGroup::kBig, the mode TVM's pool starts in
    tvm.get_global_func("runtime.config_threadpool")(affinity_big_cores, threads)
    used = int(tvm.runtime.num_threads())
    if used != threads:
        raise InputError(f"threads={threads}: TVM's thread pool in this thread has only {used} workers; set "
                         f"TVM_NUM_THREADS before the first TVM run in the process")
    return used


class TVMPredictor:
    """Runs a `save_artifact` folder with the Relax VM: images (N,3,24,94) float32 -> logits (N,C,18) float32.

    Loads the library only after its SHA-256 matches the manifest's (this catches a corrupt or swapped file, not a
    forger who also edits the manifest). The library has a fixed batch; larger inputs run in chunks of it, the last
    one zero-padded, which is exact because LPRNet normalises each sample on its own. An artifact with a batched
    library (manifest key `batched`) runs whole batches of its size with it, unless `batched` is False.

    `workers` > 1 runs the chunks on that many VMs at once, one Python thread each (TVM releases the GIL). That only
    pays for an untuned build, whose kernels are single-threaded (LegalizeOps writes no parallel loops), where it
    nearly halves an accuracy pass on 2 cores. A tuned build's kernels already use `threads`; keep the default 1 there
    and whenever latency or throughput is measured.
    """

    name = "tvm"

    def __init__(self, folder: str | os.PathLike, threads: int | None = None, workers: int = 1,
                 batched: bool = True):
        if not isinstance(workers, int) or workers < 1:
            raise InputError(f"workers must be a positive integer, got {workers!r}")
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        library = self._checked_library(self.manifest)
        if self.manifest["tvm_version"] != tvm.__version__:
            # The VM bytecode and the library's ABI are not stable across TVM releases.
            raise InputError(f"{library}: built with TVM {self.manifest['tvm_version']}, this is TVM "
                             f"{tvm.__version__}; rebuild it")
        batched_entry = self.manifest.get(BATCHED) if batched else None
        batched_library = self._checked_library(batched_entry) if batched_entry else None
        try:
            self.alphabet = get_alphabet(self.manifest["alphabet"])
        except InputError as error:
            raise InputError(f"{self.folder / MANIFEST_FILE}: {error}") from None
        self.input_shape = tuple(self.manifest["input_shape"])
        # None leaves TVM's defaults alone (asking TVM for its count would create the pool at its default size).
        self.threads = configure_runtime_threads(threads) if threads else None
        module = tvm.runtime.load_module(str(library))
        self.vm = relax.VirtualMachine(module, tvm.cpu())
        # A VM is not safe to call from two threads at once: each worker gets its own.
        self._mains = [self.vm["main"]] + [relax.VirtualMachine(module, tvm.cpu())["main"] for _ in range(workers - 1)]
        # The batched build (see lprnet.compile.tvm.batched) runs every whole batch of its size; the rest, the
        # build above.
        self.batched_input_shape = tuple(batched_entry["input_shape"]) if batched_entry else None
        self._batched_main = (relax.VirtualMachine(tvm.runtime.load_module(str(batched_library)), tvm.cpu())["main"]
                              if batched_library else None)

    def _checked_library(self, entry: dict) -> Path:
        """The library a manifest entry names, once it is a whole library inside the folder with the entry's
        SHA-256."""
        library = self.folder / entry["library"]
        if not library.is_file():
            raise MissingFileError(f"{library}: the library named in the manifest is absent")
        if not library.resolve().is_relative_to(self.folder.resolve()):
            raise InputError(f"{library}: a link out of the artifact's folder; refusing to load it")
        if sha256_file(library) != entry["library_sha256"]:
            raise InputError(f"{library}: SHA-256 does not match {MANIFEST_FILE}; refusing to load it")
        check_library(library, self.manifest.get("target", {}))
        return library

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape[1:]:
            raise InputError(f"images of shape {images.shape}; {self.folder} expects (N, "
                             f"{', '.join(map(str, self.input_shape[1:]))})")
        images = np.ascontiguousarray(images, dtype=np.float32)
        if self._batched_main is not None and len(images) >= self.batched_input_shape[0]:
            size = self.batched_input_shape[0]
            whole = len(images) // size * size
            outputs = [self._batched_main(tvm.runtime.tensor(images[start:start + size])).numpy()
                       for start in range(0, whole, size)]
            return np.concatenate([*outputs, self._run_chunks(images[whole:])])
        return self._run_chunks(images)

    def _run_chunks(self, images: np.ndarray) -> np.ndarray:
        batch = self.input_shape[0]
        chunks = [images[start:start + batch] for start in range(0, len(images), batch)]
        empty = np.zeros((0, *self.manifest["output_shape"][1:]), np.float32)  # so N=0 gives (0,C,18)
        workers = min(len(self._mains), len(chunks))
        if workers <= 1:
            return np.concatenate([empty, *(self._run(self._mains[0], chunk) for chunk in chunks)])
        with ThreadPoolExecutor(workers) as pool:  # worker i runs chunks i, i + workers, ... on its own VM
            shares = list(pool.map(lambda i: [self._run(self._mains[i], chunk) for chunk in chunks[i::workers]],
                                   range(workers)))
        ordered = [shares[i % workers][i // workers] for i in range(len(chunks))]
        return np.concatenate([empty, *ordered])

    def _run(self, main, chunk: np.ndarray) -> np.ndarray:
        count, batch = len(chunk), self.input_shape[0]
        if count < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - count, *chunk.shape[1:]), np.float32)])
        return main(tvm.runtime.tensor(chunk)).numpy()[:count]

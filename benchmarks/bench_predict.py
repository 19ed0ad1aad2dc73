"""Speed of `galnet predict`: a FITS cube of N stamps (one PSF per stamp) to a catalogue.

Times the whole command path (FITS reading, network, chi2nu models, catalogue writing) with the
default options and with --no-chi2, in one run on this machine.

    python benchmarks/bench_predict.py [--data test.h5] [-n 20000] [--device cpu] [--threads 2]

Without --data it simulates N hsc-r stamps (synthetic backgrounds) first (not timed).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from astropy.io import fits

from galnet.nn.model import count_flops, load_model
from galnet.nn.predict import predict_files
from galnet.sim.simulate import simulate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="HDF5 from galnet simulate")
    p.add_argument("-n", type=int, default=20000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=2, help="timed runs per setting (best kept)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = a.data
        if src is None:
            src = simulate("hsc-r", a.n, 0, tmp / "sim.h5", snr_min=5.0, progress=False)
        with h5py.File(src) as f:
            n = min(a.n, f["images"].shape[0])
            im, ps = f["images"][:n], f["psfs"][:n]
        fits.PrimaryHDU(im).writeto(tmp / "stamps.fits")
        fits.PrimaryHDU(ps).writeto(tmp / "psfs.fits")
        del im, ps
        model = load_model(device=a.device)
        flops = count_flops(model)
        dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else platform.processor()
        print(f"# {n} stamps, device {a.device} ({dev}), torch threads {torch.get_num_threads()}, "
              f"model {flops['params'] / 1e6:.2f} M parameters, {flops['flops'] / 1e6:.1f} MFLOP "
              f"per stamp")
        predict_files(tmp / "warm.ecsv", images=tmp / "stamps.fits", psf=tmp / "psfs.fits",
                      model=model, device=a.device, chunk=a.chunk, progress=False, chi2=False,
                      overwrite=True)
        for chi2 in (True, False):
            best = np.inf
            for _ in range(a.repeat):
                t0 = time.perf_counter()
                predict_files(tmp / "cat.fits", images=tmp / "stamps.fits",
                              psf=tmp / "psfs.fits", model=model, device=a.device,
                              chunk=a.chunk, chi2=chi2, progress=False, overwrite=True)
                if a.device.startswith("cuda"):
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t0)
            label = "default (with chi2nu models)" if chi2 else "--no-chi2"
            print(f"{label:<30} {best:7.2f} s  {n / best:9.0f} galaxies/s")


if __name__ == "__main__":
    main()

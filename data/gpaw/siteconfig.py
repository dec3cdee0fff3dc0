"""GPAW build settings for the dft extra: FFTW for the plane-wave FFTs (1.47x faster than scipy.fft here).

New install (README): GPAW_CONFIG=$PWD/data/gpaw/siteconfig.py pip install --no-cache-dir -e ".[dft]"
GPAW already installed: GPAW_CONFIG=$PWD/data/gpaw/siteconfig.py pip install --no-cache-dir --no-deps \
    --force-reinstall "gpaw==$(python -c 'import gpaw; print(gpaw.__version__)')"
(--no-cache-dir: a wheel that pip cached from a build without FFTW would be reused.)"""

fftw = True
libraries = ["xc", "blas", "fftw3"]

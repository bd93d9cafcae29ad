from setuptools import find_packages, setup

setup(
    name="xlstm_hf",
    version="0.1.0",
    description="xLSTM 7B as a first-class Hugging Face Transformers model: exact PyTorch reference, Triton kernels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["xlstm_hf", "xlstm_hf.*"]),
    # the small model shipped with the package (xlstm_hf.default_model_path()): weights, tokenizer, card, loss curve
    package_data={"xlstm_hf": ["default_model/*"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "transformers>=5.24,<6",  # the `cache` keyword and output field (older 5.x say past_key_values)
        "safetensors",
        "huggingface_hub",
        "tqdm",
    ],
    entry_points={"console_scripts": ["xlstm-hf = xlstm_hf.cli:main"]},
    extras_require={
        "triton": ["triton>=3.6"],
        "peft": ["peft>=0.17"],
        # ifeval, math: what the Leaderboard's IFEval and MATH tasks import; wonderwords: RULER's common-words task
        "eval": ["lm_eval[ifeval,math]>=0.4.8", "wonderwords"],
        # xlstm: the reference of the xLSTM[a:b] parity tests (tests/test_xlstm_stack.py); a test dependency only,
        # never imported by xlstm_hf (NXAI Community License). Its own dependencies keep the installed torch.
        # matplotlib: benchmarks/plots.py, which the tests run on a tiny benchmark's results; pytest-xdist: the suite
        # runs on every core (`-n auto`; most of its time is subprocesses importing torch).
        "dev": ["pytest>=8", "pytest-xdist>=3", "accelerate>=1.0", "peft>=0.17", "xlstm==2.0.6", "matplotlib"],
    },
)

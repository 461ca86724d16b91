from setuptools import find_packages, setup

setup(
    name="caffe_attacks",
    version="0.1.0",
    description="Caffe-faithful adversarial attacks on semantic segmentation "
                "(Arnab, Miksik & Torr, CVPR 2018)",
    packages=find_packages(include=["caffe_attacks", "caffe_attacks.*"]),
    package_data={"caffe_attacks": ["data/*", "report/templates/*"]},
    python_requires=">=3.9",
    install_requires=["numpy", "scipy", "h5py", "opencv-python-headless",
                      "matplotlib", "Pillow", "tqdm", "jinja2>=3.1"],
    extras_require={"torch": ["torch>=2.0"]},
)

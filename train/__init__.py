"""Training R(2+1)D models: data, sampling, model set-up, the (distributed) training loop.

Entry points: ``r21d train`` / ``torchrun -m r21d.train`` (:mod:`r21d.train.cli`,
:func:`r21d.train.trainer.train` with a :class:`r21d.train.config.TrainConfig`) and
``r21d data`` (hashtags, subsets, manifests). One module per idea:

=================  =====================================================================
``data``           manifests (JSONL/CSV, one or many labels), class folders, label maps
``clips``          training clips: temporal jitter, random crop, flip, normalisation
``dataset``        sampler draws -> (clip, target); undecodable videos skipped
``sampling``       square-root sampling, the distributed draw sampler, subsets
``hashtags``       the paper's relevant hashtags and a small stemmer
``model_setup``    from scratch / from a checkpoint (new classifier) / fc-only
``linear_probe``   frozen features + L2-regularised logistic regression (L-BFGS)
``inflate``        2D -> 3D weight inflation (I3D-style initialisation)
``schedule``       linear lr scaling, warm-up, step halving or cosine
``precise_bn``     BN statistics recomputed with the final weights
``distributed``    torchrun process groups (gloo on CPU, nccl on GPU)
``run_state``      checkpoint pairs: r21d weights + training state, resume
``evaluate``       10-clip video-level validation
``config``         options from YAML/TOML files and flags
``preflight``      the checks a run passes before it starts a process or writes a file
``interrupt``      Ctrl-C/SIGTERM: stop after the step with a checkpoint, all ranks together
``launch``         ``--nproc N``: the ranks on this machine, started and watched
``trainer``        the loop
=================  =====================================================================
"""

"""One pipeline declaration, two engines that run it, and the artifact contract between its stages.

:mod:`.pipeline` declares the stages once; :mod:`.artifacts` owns stage folders, artifact keys, file
names and manifests; :mod:`.argo` renders the declaration with Hera (:mod:`.render` for GitOps,
:mod:`.submission` for an Argo server, :mod:`.yamlio` for the YAML); :mod:`.local` runs the same
commands here; :mod:`.images` names each stage's container image.
"""

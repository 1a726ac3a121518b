"""The edges training and serving share: image files in, the BentoML model store in and out.

`models/` holds no file formats and no BentoML; `training/` and `service/`
never import each other. What both need at their edges lives here, once:
the one image decoder and the one model-store reader and writer.
"""

"""The pipeline's steps: one module per stage, each a ``main(argv)`` that reads paths and writes paths.

Steps never talk to Argo: the engines move artifacts between them (see :mod:`cvat_argo.engines.pipeline`).
"""

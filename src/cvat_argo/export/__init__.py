"""The trained model in the formats it is served in (SavedModel, TFLite), self-tested, with its model card.

Library code only, no CLI: :mod:`cvat_argo.steps.convert` parses the arguments and runs these in order.
"""

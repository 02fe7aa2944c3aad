"""Training augmentation, inside the compiled train step.

In the order the train step applies them (``pipeline.train_batch``):
random crop and flip (``basic``), the policy (AutoAugment or RandAugment,
``policies`` on the uint8 image operations of ``image_ops``), normalisation,
Cutout (``basic``), then Mixup or CutMix (``mix``), which also mixes the
targets. Each draws from a random stream of its own, derived from the step's
key, so turning one on leaves the others' draws as they were.
"""

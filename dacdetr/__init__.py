"""DAC-DETR: Divide the Attention and Conquer for DETR (NeurIPS 2023), reimplemented.

``dacdetr.models.build_model(args)`` builds the detector (Deformable-DETR two-stage with box
refinement, mixed query selection, look-forward-twice, contrastive denoising, and the
DAC "C-decoder" that shares every decoder weight but drops self-attention after layer 0),
its criterion and the NMS post-processor.
"""

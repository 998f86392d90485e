"""Analysis of pools and runs, no plotting: parameter accounting, routing and orthogonality
diagnostics, vote and merge ties, the router census and the studies of DAC's variants and of
the LoRA family.

    accounting.py       trainable parameters (the paper's 18.99 MiB for ViT-B/16)
    diagnostics.py      routing profiles, energy of expert subsets, collisions, overlaps
    ties.py             how often the vote and the merge are decided by the tie rule
    router_census.py    which routers see their input and which route on a constant token
    variants_study.py   loading the three-seed comparison of DAC's variants
    lora_family.py      DAC among O-LoRA, InfLoRA, SD-LoRA, LoRAMoE, CoDyRA (notebook 07)
"""

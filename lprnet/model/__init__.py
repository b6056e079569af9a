"""The network and its data: LPRNet, alphabets, CTC decoding, labelled images and splits, the synthetic renderer,
and PyTorch checkpoints."""

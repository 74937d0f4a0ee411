"""The one training loop and the stages that use it: pretrain (masked or causal LM) and
finetune (classification)."""

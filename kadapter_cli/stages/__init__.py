"""The pipeline stages as library functions (what each command runs): adapter pretraining,
composition, fine-tuning/evaluation/prediction, probing, reports and artifact inspection."""

-- Evaluations (confusion matrix, per-class metrics, ROC/PR-AUC), as JSON: of the validation
-- set for each checkpoint's weights, and of the validation and test sets for a job's final
-- weights.
ALTER TABLE checkpoints ADD COLUMN evaluation TEXT;
ALTER TABLE jobs ADD COLUMN evaluation TEXT;

"""What is measured on a model: refusal log-odds and rates, KL, judged replies, attribution, statistics."""

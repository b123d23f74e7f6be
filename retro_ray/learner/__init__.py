"""The learner of the retrospective model: plain classes (no Ray import); Ray Train wraps them at
the edge."""

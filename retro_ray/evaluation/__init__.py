"""Evaluation: which conditions are played (:mod:`.conditions`), playing them into the Parquet
experience log (:mod:`.play`), and the table with its intervals (:mod:`.table`, pure)."""

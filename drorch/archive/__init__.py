"""The audit archive: the hash-chained audit log and the incident reports, shipped to an
S3 bucket under Object Lock (``drorch audit ship``) and verified from there (``drorch
audit verify s3://...``). ``layout`` names the objects, ``ship`` writes them, ``verify``
checks them."""

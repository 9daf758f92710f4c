"""Sources: watch a local folder or an S3 prefix and report each model's ready versions.

May import `loader.base` and third-party libraries only. boto3 is imported by `s3_client`
alone (botocore and s3transfer also by `s3_fetch`); watchdog by `local`.
"""

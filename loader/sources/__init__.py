"""Sources: watch a local folder or an object store prefix (S3, Google Cloud Storage, Azure
Blob Storage) and report each model's ready versions.

May import `loader.base` and third-party libraries only. Each store's client library is
imported by its own module alone: boto3, botocore and s3transfer by `s3_client`,
google-cloud-storage by `gcs_client`, azure-storage-blob and azure-identity by
`azure_client`; watchdog by `local`. `store_source` and `store_fetch` hold the rules every
store shares, over the `object_store.ObjectStore` protocol.
"""

"""Test harness shared by several test modules: process lookup, the S3 fault proxy, the bad-input corpus, a PACS
(Orthanc with DICOMweb) on localhost."""

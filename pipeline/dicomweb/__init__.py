"""The PACS connection over DICOMweb: a client factory for any DICOMweb server (``client``), screening findings
as DICOM Structured Reports and heat-map captures (``findings``, ``reports``, ``captures``), and storing them in a
folder or a PACS (``store``)."""

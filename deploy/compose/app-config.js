// dicomnode.viewer.app_config_js(), copied for deploy/compose.yaml; rewrite with
// `.venv/bin/python -m tests.deploy.test_compose` (tests/deploy checks it).
window.config = {
  "routerBasename": "/",
  "showStudyList": true,
  "extensions": [],
  "modes": [],
  "customizationService": {},
  "investigationalUseDialog": {
    "option": "never"
  },
  "defaultDataSourceName": "dicomweb",
  "dataSources": [
    {
      "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
      "sourceName": "dicomweb",
      "configuration": {
        "friendlyName": "dicomnode's local Orthanc",
        "name": "orthanc",
        "qidoRoot": "/dicom-web",
        "wadoRoot": "/dicom-web",
        "wadoUriRoot": "/wado",
        "qidoSupportsIncludeField": false,
        "imageRendering": "wadors",
        "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": true,
        "supportsFuzzyMatching": false,
        "supportsWildcard": true,
        "omitQuotationForMultipartRequest": true,
        "bulkDataURI": {
          "enabled": true
        }
      }
    }
  ]
};

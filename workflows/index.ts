/** The workflows a cloudgate worker runs (this file is the worker's `workflowsPath`). */
export { ClusterWorkflow } from './cluster.js';
export { ServiceWorkflow } from './service.js';
export { CloudCatalogueWorkflow } from './catalogue.js';
export { ClusterWindowWorkflow } from './windows.js';

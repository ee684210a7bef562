// The CapabilityStatement served at GET [base]/metadata, built from the loaded R4 schema.
import { getSearchParameters, globalSchema, isResourceType } from '@medplum/core';

const TYPE_INTERACTIONS = ['read', 'vread', 'update', 'delete', 'history-instance', 'history-type', 'create', 'search-type'];
const NOT_STORABLE = new Set(['Resource', 'DomainResource', 'Bundle', 'Parameters', 'OperationOutcome']);

/** Every R4 resource type this server stores, sorted. */
export function resourceTypes() {
  return Object.keys(globalSchema.types)
    .filter((t) => isResourceType(t) && !NOT_STORABLE.has(t))
    .concat('Bundle')
    .sort();
}

/**
 * Where the `medplum` profile publishes its transaction caps (real Medplum publishes none): a complex
 * extension on `rest[0]` with the integer sub-extensions `maxStrictEntries` and `maxUpdates`.
 */
export const TRANSACTION_LIMITS_URL = 'https://planbridge.dev/fhir/StructureDefinition/transaction-limits';

const SOFTWARE = {
  medplum: 'planbridge-fhir, medplum profile (Medplum fhir-router 5.2.13 in memory with its transaction limits, HAPI-like front end)',
  hapi: 'planbridge-fhir, hapi profile (Medplum fhir-router 5.2.13 in memory, no transaction limits, HAPI-like front end)',
};

export function capabilityStatement(baseUrl, startedAt, profile = 'medplum', limits = { maxStrictEntries: 8, maxUpdates: 50 }) {
  const extension = profile === 'medplum'
    ? [{
      url: TRANSACTION_LIMITS_URL,
      extension: [
        { url: 'maxStrictEntries', valueInteger: limits.maxStrictEntries },
        { url: 'maxUpdates', valueInteger: limits.maxUpdates },
      ],
    }]
    : undefined;
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: startedAt,
    publisher: 'planbridge',
    kind: 'instance',
    software: { name: SOFTWARE[profile], version: '0.1.0' },
    implementation: { description: 'planbridge local development FHIR server', url: baseUrl },
    fhirVersion: '4.0.1',
    format: ['application/fhir+json', 'json'],
    rest: [
      {
        mode: 'server',
        ...(extension ? { extension } : {}),
        resource: resourceTypes().map((type) => ({
          type,
          profile: `http://hl7.org/fhir/StructureDefinition/${type}`,
          interaction: TYPE_INTERACTIONS.map((code) => ({ code })),
          versioning: 'versioned-update',
          readHistory: true,
          updateCreate: true,
          conditionalCreate: true,
          conditionalUpdate: true,
          conditionalDelete: 'single',
          searchInclude: ['*'],
          searchParam: Object.entries(getSearchParameters(type) ?? {})
            .filter(([code]) => !['_project', '_compartment'].includes(code))
            .map(([name, sp]) => ({ name, type: sp.type })),
        })),
        interaction: [{ code: 'transaction' }, { code: 'batch' }, { code: 'search-system' }],
      },
    ],
  };
}

-- The W3C trace context (`traceparent`) of the span that started a job or workflow, so that
-- the run continues the caller's trace on whichever node takes it. NULL when the starter was
-- not traced (tracing off, the default): nothing is written then.
ALTER TABLE forge.jobs ADD COLUMN trace_context text;
ALTER TABLE forge.workflows ADD COLUMN trace_context text;

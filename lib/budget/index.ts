export * from './budget-alert.event.js';
export * from './budget.exceptions.js';
export * from './budget.service.js';

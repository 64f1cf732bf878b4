export * from './default-prices.js';
export * from './pricing.service.js';

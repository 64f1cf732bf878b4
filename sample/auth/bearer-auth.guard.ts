import { CanActivate, ExecutionContext, Inject, Injectable, UnauthorizedException } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import { RequestContextStore } from '../../lib/index.js';
import { IS_PUBLIC } from './public.decorator.js';
import { SAMPLE_CONFIG } from '../sample.tokens.js';
import type { SampleConfig } from '../sample.config.js';

/**
 * The sample's identity: `Authorization: Bearer <token>` looked up in SAMPLE_USERS. Sets `req.user`
 * and the request context's user, which the library's limits, budgets and usage key on.
 */
@Injectable()
export class BearerAuthGuard implements CanActivate {
  constructor(
    private readonly reflector: Reflector,
    @Inject(SAMPLE_CONFIG) private readonly config: SampleConfig,
  ) {}

  canActivate(context: ExecutionContext): boolean {
    if (this.reflector.getAllAndOverride<boolean>(IS_PUBLIC, [context.getHandler(), context.getClass()]))
      return true;
    const req = context
      .switchToHttp()
      .getRequest<{ headers: Record<string, string | undefined>; user?: { id: string } }>();
    const match = /^Bearer\s+(\S+)$/i.exec(req.headers.authorization ?? '');
    const user = match ? this.config.users.get(match[1]) : undefined;
    if (!user) throw new UnauthorizedException('Missing or unknown bearer token');
    req.user = { id: user };
    const ctx = RequestContextStore.fromRequest(req);
    if (ctx) ctx.user = user;
    return true;
  }
}
